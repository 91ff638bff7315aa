# flashgen's container image: `make image` (infra/image.py) builds it with no network, from
# the debootstrapped base (Debian bookworm, its python3 3.11) and the wheels in
# build/image/, the build context's only content (.dockerignore).
#
# It runs read-only: `docker run --read-only --tmpfs /tmp --network host -v STATE:/state`.
# Everything that writes goes to /tmp (Prefect's home, caches) or to the state volume
# (FLASHGEN_STATE_DIR, which must be a mounted volume: FLASHGEN_STATE_DIR_MOUNTED).
ARG BASE=flashgen-base:bookworm

FROM ${BASE} AS install
# A venv of its own (Debian's python is externally managed). The dependencies first, in a
# layer that only a change of pyproject.toml rebuilds; then flashgen, without pip.
COPY build/image/wheels /wheels
RUN python3 -m venv /opt/flashgen \
 && /opt/flashgen/bin/pip install --quiet --no-index --no-cache-dir /wheels/*.whl
COPY build/image/flashgen /flashgen
RUN /opt/flashgen/bin/pip install --quiet --no-index --no-cache-dir --no-deps \
      --find-links /wheels /flashgen/flashgen-*.whl \
 && /opt/flashgen/bin/pip check \
 && /opt/flashgen/bin/pip uninstall --quiet --yes pip setuptools \
 && cd /opt/flashgen/lib/python3.11/site-packages/pyarrow \
 && rm -rf include src tests flight.py _flight.*.so libarrow_flight.so.* \
      libarrow_python.so libarrow_python.so.*.*.* *.pyx *.pxd *.pxi
# pyarrow is a third of the image: the catalog (Parquet) needs neither Arrow Flight (the
# RPC framework, 32 MB), nor headers, Cython sources and tests, nor libarrow_python's two
# copies that nothing loads (the extensions link libarrow_python.so.<major>).

FROM ${BASE}
COPY --from=install /opt/flashgen /opt/flashgen
# Non-root, numeric (Kubernetes' runAsNonRoot can check it). /state belongs to it, so a
# fresh named volume mounted there does too. /app is the working directory: its
# `deployments` is the installed package's, so prefect.yaml's relative prompt files
# (deployments/prompts/daily.yaml) are found without a checkout.
RUN groupadd --system --gid 10001 flashgen \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin flashgen \
 && mkdir /app /state && chown 10001:10001 /state \
 && ln -s /opt/flashgen/lib/python3.11/site-packages/flashgen/deployments /app/deployments
ENV PATH=/opt/flashgen/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    PREFECT_HOME=/tmp/prefect \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLASHGEN_STATE_DIR=/state \
    FLASHGEN_STATE_DIR_MOUNTED=1
WORKDIR /app
USER 10001:10001
# No ENTRYPOINT: a Prefect worker gives the command (`prefect flow-run execute`).
CMD ["flashgen", "--help"]
