"""A batch as one self-contained HTML page: its images, their prompts, and what went wrong.

One renderer, two places to open it. ``link(uri) -> str`` turns each ``s3://`` URI the page
points at (images, metadata records) into an href:

- **in S3**: ``publish_gallery`` links presigned GET URLs and writes the page to
  ``<prefix>/galleries/<batch_id>.html``; its own presigned URL opens it in any browser::

      page = publish_gallery(store, "spring-campaign", expires_in=7 * 24 * 3600)
      page.url
      # → 'https://my-bucket.s3.amazonaws.com/flashgen/galleries/spring-campaign.html?X-Amz-…'

- **on disk**: ``write_local_gallery`` downloads the files the page links into
  ``out_dir/images/…`` and ``out_dir/metadata/…`` and links them by relative path, so
  ``out_dir/index.html`` opens with no network::

      write_local_gallery(store, "spring-campaign", Path("review"))
      # → PosixPath('review/index.html')

The page has no scripts and no external assets (inline CSS only), and every text from the
batch is escaped. Its size is bounded whatever the batch: at most ``MAX_EMBEDDED_IMAGES``
images are shown as pictures and ``MAX_LISTED_IMAGES`` more as table lines, and at most
``MAX_LISTED_ISSUES`` rows without an image with their reasons (the first, by line); the
rest are counted and the page points to the manifest, which has every row. The rows are
read once, as a stream (``Selection.of``), so a batch of any size renders in bounded memory.
"""

from __future__ import annotations

import heapq
import html
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from pydantic import BaseModel

from flashgen.batch_records import MAX_PARALLEL_READS, read_records
from flashgen.errors import StorageError
from flashgen.records import ImageRecord, ItemState, ManifestRow
from flashgen.spend import Spend, planned_of
from flashgen.storage import Store, parse_s3_uri

MAX_EMBEDDED_IMAGES = 2000  # images shown as pictures
MAX_LISTED_IMAGES = 2000  # more images, one table line each
MAX_LISTED_ISSUES = 200  # rows without an image shown with their reason
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
NOT_GENERATED = "not-generated"  # the section's id: the header's failure counts link to it

Link = Callable[[str], str]

_RATIO = re.compile(r"\((\d+:\d+)\)$")


class PublishedGallery(BaseModel):
    """Where ``publish_gallery`` wrote the page and the presigned URL that opens it."""

    uri: str
    url: str
    expires_at: datetime


# --- the page --------------------------------------------------------------------------


@dataclass
class Selection:
    """What the page shows of a batch, chosen in one pass over its rows in bounded memory:
    the counts, the first ``max_images`` images as pictures and ``max_listed`` more as table
    lines, and the first ``max_issues`` rows without an image ("first" in line order,
    whatever order the rows come in). Everything past that is counted, and the page links
    the manifest for it."""

    total: int
    counts: Counter
    images: list[ManifestRow]
    listed: list[ManifestRow]
    images_total: int
    issues: list[ManifestRow]
    issues_total: int

    @classmethod
    def of(cls, rows: Iterable[ManifestRow], *, max_images: int = MAX_EMBEDDED_IMAGES,
           max_listed: int = MAX_LISTED_IMAGES,
           max_issues: int = MAX_LISTED_ISSUES) -> Selection:
        counts: Counter = Counter()
        images = _First(max_images + max_listed)
        issues = _First(max_issues)
        for row in rows:
            counts[row.state] += 1
            (images if row.image_uris else issues).add(row)
        firsts = images.rows()
        return cls(total=sum(counts.values()), counts=counts, images=firsts[:max_images],
                   listed=firsts[max_images:], images_total=images.seen,
                   issues=issues.rows(), issues_total=issues.seen)

    @property
    def rows(self) -> list[ManifestRow]:
        """Every row the page shows (whose records it needs)."""
        return [*self.images, *self.listed, *self.issues]


class _First:
    """The ``n`` rows with the lowest line numbers seen so far (a bounded heap), and a count."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self._heap = n, 0, []

    def add(self, row: ManifestRow) -> None:
        self.seen += 1
        if self.n <= 0:
            return
        entry = (-(row.line or 0), -self.seen, row)  # the largest line sits on top
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def rows(self) -> list[ManifestRow]:
        return [row for *_, row in sorted(self._heap, reverse=True)]


def render_gallery(
    batch_id: str,
    rows: Iterable[ManifestRow] | Selection,
    records: Mapping[str, ImageRecord],
    link: Link,
    *,
    max_images: int = MAX_EMBEDDED_IMAGES,
    links_expire_at: datetime | None = None,
    now: datetime | None = None,
    spend: Spend | None = None,
    manifest: tuple[str, str | None] | None = None,
) -> str:
    """The batch's gallery as one HTML document, of bounded size whatever the batch.

    ``records`` maps metadata URIs to their ``ImageRecord`` (see ``read_records``);
    ``link`` maps every ``s3://`` URI on the page to an href. ``links_expire_at`` is said on
    the page when the hrefs stop working (presigned URLs). ``manifest`` is the manifest's
    URI and its href (or None), named where the page leaves rows out::

    page = render_gallery("b1", rows, records, link=lambda uri: uri)
    """
    chosen = rows if isinstance(rows, Selection) else Selection.of(rows, max_images=max_images)
    shown = [_Card.of(row, records) for row in chosen.images]
    listed = [_Card.of(row, records) for row in chosen.listed]
    issues = [_Card.of(row, records) for row in chosen.issues]
    not_listed = chosen.images_total - len(shown) - len(listed)
    now = now or datetime.now(UTC)

    parts = [_head(batch_id), _header(batch_id, chosen.total, chosen.counts, now,
                                      links_expire_at, spend)]
    if shown:
        parts.append(_section(
            "images", "Images", chosen.images_total,
            "Click an image for the full-size file, “metadata” for everything recorded "
            "about it." + (f" The first {len(shown):,} of {chosen.images_total:,} are shown "
                           "as pictures; the rest are listed below."
                           if chosen.images_total > len(shown) else ""),
            '<div class="grid">' + "".join(_figure(card, link) for card in shown) + "</div>"))
    if listed or not_listed:
        parts.append(_section(
            "more-images", "More images", chosen.images_total - len(shown),
            f"Not shown as pictures: this page embeds at most {len(shown):,} images.",
            _table(listed, link) + _more(not_listed, "images", manifest)))
    if issues:
        parts.append(_section(
            NOT_GENERATED, "Not generated", chosen.issues_total,
            "Rows that have no image, and why"
            + (f" (the first {len(issues):,} by line)."
               if chosen.issues_total > len(issues) else "."),
            '<div class="issues">' + "".join(_issue(card, link) for card in issues)
            + "</div>" + _more(chosen.issues_total - len(issues), "rows", manifest)))
    if not chosen.total:
        parts.append('<p class="empty">This batch has no rows.</p>')
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _more(count: int, what: str, manifest: tuple[str, str | None] | None) -> str:
    """The rows the page leaves out, counted, and where all of them are."""
    if count <= 0:
        return ""
    where = "the batch's manifest"
    if manifest:
        uri, href = manifest
        where = (f'the manifest, <a href="{_e(href)}">{_e(uri)}</a>' if href
                 else f"the manifest, <code>{_e(uri)}</code>")
    return (f'<p class="more">{count:,} more {what} not on this page: every row is in '
            f"{where} (one JSON object per line), and in the batch's catalog file.</p>")


@dataclass(frozen=True)
class _Card:
    """What the page shows of one manifest row, its record filled in where there is one."""

    row: ManifestRow
    record: ImageRecord | None
    image_uri: str | None

    @classmethod
    def of(cls, row: ManifestRow, records: Mapping[str, ImageRecord]) -> _Card:
        record = records.get(row.metadata_uri) if row.metadata_uri else None
        image = (row.image_uris or [None])[0] or (record.image_uri if record else None)
        return cls(row, record, image)

    @property
    def prompt(self) -> str:
        inputs = self.record.inputs if self.record else {}
        return self.row.prompt or str(inputs.get("prompt") or "")

    @property
    def seed(self) -> str:
        seed = self.row.seed
        if seed is None and self.record:
            seed = self.record.inputs.get("seed")
        return "—" if seed is None else str(seed)

    @property
    def ratio(self) -> str:
        ratio = self.row.aspect_ratio
        if ratio is None and self.record:
            ratio = self.record.inputs.get("aspect_ratio")
        if not ratio:
            return "—"
        short = _RATIO.search(str(ratio))  # "1440:810 (16:9)" reads as "16:9"
        return short[1] if short else str(ratio)

    @property
    def size(self) -> str:
        if self.record and self.record.width and self.record.height:
            return f"{self.record.width}×{self.record.height}"
        return "—"

    @property
    def line(self) -> str:
        return f"line {self.row.line}" if self.row.line is not None else "line ?"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _head(batch_id: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Batch {_e(batch_id)} · flashgen gallery</title>"
            f"<style>{_CSS}</style></head><body>")


def _header(batch_id: str, total: int, counts: Counter, now: datetime,
            expires: datetime | None, spend: Spend | None = None) -> str:
    chips = "".join(_chip(state, counts.get(state, 0)) for state in ItemState)
    when = f"Made {_stamp(now)}"
    if expires:
        when += (f" · links work until {_stamp(expires)}; run "
                 f"<code>flashgen gallery {_e(batch_id)}</code> for fresh ones")
    return (f'<header class="top"><div class="wrap">'
            f'<p class="kicker">flashgen · batch gallery</p>'
            f'<h1>Batch <span class="id">{_e(batch_id)}</span></h1>'
            f'<ul class="counts"><li class="count total" data-state="total">'
            f"<b>{total:,}</b> rows</li>{chips}</ul>"
            + (f'<p class="spend">{_e(spend.line())}</p>' if spend else "")
            + f'<p class="when">{when}</p></div></header><main class="wrap">')


def _chip(state: ItemState, count: int) -> str:
    text = f"<b>{count:,}</b> {state.value}"
    if count and state in (ItemState.FAILED, ItemState.INVALID, ItemState.CANCELLED):
        text = f'<a href="#{NOT_GENERATED}">{text}</a>'  # failures sit below the images
    return f'<li class="count {state.value}" data-state="{state.value}">{text}</li>'


def _section(anchor: str, title: str, count: int, note: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{_e(title)} <span class="n">{count:,}</span></h2>'
            f'<p class="note">{_e(note)}</p>{body}</section>')


def _figure(card: _Card, link: Link) -> str:
    assert card.image_uri is not None
    href = _e(link(card.image_uri))
    record = card.record
    dims = f' width="{record.width}" height="{record.height}"' if (
        record and record.width and record.height) else ""
    extra = "".join(f' <a href="{_e(link(uri))}">output {n}</a>'
                    for n, uri in enumerate(card.row.image_uris[1:], start=1))
    reason = f'<p class="why">{_e(card.row.reason)}</p>' if card.row.reason else ""
    return (f'<figure class="card {card.row.state.value}">'
            f'<a class="thumb" href="{href}" target="_blank" rel="noopener">'
            f'<img src="{href}" alt="{_e(_clip(card.prompt, 200))}"{dims} '
            f'loading="lazy" decoding="async"></a>'
            f'<figcaption><p class="prompt" title="{_e(card.prompt)}">{_e(card.prompt)}</p>'
            f"{_facts(card)}{reason}"
            f'<p class="foot"><span class="badge {card.row.state.value}">'
            f"{card.row.state.value}</span><span>{_e(card.line)}</span>"
            f"{_record_link(card, link)}{extra}</p></figcaption></figure>")


def _issue(card: _Card, link: Link) -> str:
    reason = card.row.reason or "no reason recorded"
    prompt = (f'<p class="prompt">{_e(card.prompt)}</p>' if card.prompt
              else '<p class="prompt none">(no prompt)</p>')
    return (f'<article class="issue {card.row.state.value}">'
            f'<p class="foot"><span class="badge {card.row.state.value}">'
            f"{card.row.state.value}</span><span>{_e(card.line)}</span>"
            f"{_record_link(card, link)}</p>"
            f'{prompt}<p class="reason">{_e(reason)}</p>{_facts(card)}</article>')


def _facts(card: _Card) -> str:
    facts = (("seed", card.seed), ("aspect ratio", card.ratio), ("size", card.size))
    known = "".join(f"<div><dt>{name}</dt><dd>{_e(value)}</dd></div>"
                    for name, value in facts if value != "—")
    return f'<dl class="facts">{known}</dl>' if known else ""


def _record_link(card: _Card, link: Link) -> str:
    if not card.row.metadata_uri:
        return ""
    return (f'<a class="meta" href="{_e(link(card.row.metadata_uri))}" target="_blank" '
            f'rel="noopener">metadata</a>')


def _table(cards: list[_Card], link: Link) -> str:
    """The rows past the picture cap: one line each, with links instead of pictures."""
    head = "".join(f"<th>{name}</th>" for name in (
        "line", "state", "prompt", "seed", "aspect ratio", "size", "files"))
    body = "".join(
        f"<tr><td>{_e(card.row.line)}</td><td>{card.row.state.value}</td>"
        f"<td>{_e(_clip(card.prompt, 160))}</td><td>{_e(card.seed)}</td>"
        f"<td>{_e(card.ratio)}</td><td>{_e(card.size)}</td>"
        f'<td><a href="{_e(link(card.image_uri))}">image</a> '
        f"{_record_link(card, link)}</td></tr>" for card in cards)
    return f'<table class="rows"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# Quiet neutral chrome so the images carry the page; state colours match the Prefect table.
_CSS = """
:root{--ink:#1d2330;--muted:#5d6675;--line:#e3e6ec;--bg:#f5f6f8;--card:#fff;
--stored:#18794e;--skipped:#5d6675;--failed:#c62a2f;--invalid:#b35c00}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:1400px;margin:0 auto;padding:0 24px}
header.top{background:#161b26;color:#fff;padding:22px 0 18px}
.kicker{margin:0;color:#9aa4b5;font-size:12px;letter-spacing:.08em;text-transform:uppercase}
h1{margin:4px 0 14px;font-size:26px;font-weight:650}
h1 .id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-weight:600}
.counts{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:8px}
.count{padding:6px 12px;border-radius:999px;background:#262d3b;color:#d8dde6;font-size:14px}
.count b{color:#fff;font-size:16px;margin-right:2px}
.count a{color:inherit;text-decoration:none}
.count.stored{box-shadow:inset 3px 0 0 #3ecf8e}.count.skipped{box-shadow:inset 3px 0 0 #9aa4b5}
.count.failed{box-shadow:inset 3px 0 0 #ff6b6b}.count.invalid{box-shadow:inset 3px 0 0 #ffb14a}
.when{margin:12px 0 0;color:#9aa4b5;font-size:13px}
.spend{margin:12px 0 0;color:#d6dbe4;font-size:14px}
.when code{color:#d8dde6}
section{margin:28px 0}
h2{font-size:19px;margin:0 0 2px}
h2 .n{color:var(--muted);font-weight:500}
.note{margin:0 0 14px;color:var(--muted);font-size:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:18px}
.card{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;
overflow:hidden;display:flex;flex-direction:column}
.thumb{display:flex;align-items:center;justify-content:center;height:240px;
background:#eceef2;border-bottom:1px solid var(--line)}
.thumb img{max-width:100%;max-height:100%;width:auto;height:auto;object-fit:contain;
display:block}
figcaption{padding:12px 14px 12px;display:flex;flex-direction:column;gap:8px;flex:1}
.prompt{margin:0;font-size:15px;display:-webkit-box;-webkit-line-clamp:4;
-webkit-box-orient:vertical;overflow:hidden}
.prompt.none{color:var(--muted);font-style:italic}
.facts{display:flex;flex-wrap:wrap;gap:6px 16px;margin:0;font-size:13px}
.facts div{display:flex;gap:5px}
.facts dt{color:var(--muted)}
.facts dd{margin:0;font-variant-numeric:tabular-nums;font-weight:550}
.foot{margin:auto 0 0;display:flex;flex-wrap:wrap;align-items:center;gap:10px;
font-size:13px;color:var(--muted)}
.badge{padding:2px 9px;border-radius:999px;font-size:12px;font-weight:650;color:#fff;
text-transform:uppercase;letter-spacing:.04em}
.badge.stored{background:var(--stored)}.badge.skipped{background:var(--skipped)}
.badge.failed{background:var(--failed)}.badge.invalid{background:var(--invalid)}
a{color:#1f5fbf}
.meta{margin-left:auto}
.why{margin:0;font-size:13px;color:var(--muted)}
.issues{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}
.issue{background:var(--card);border:1px solid var(--line);border-left:4px solid var(--skipped);
border-radius:8px;padding:12px 14px;display:flex;flex-direction:column;gap:8px}
.issue.failed{border-left-color:var(--failed)}.issue.invalid{border-left-color:var(--invalid)}
.issue .foot{margin:0}
.reason{margin:0;padding:8px 10px;border-radius:6px;background:#fbeeee;color:#7a1d21;
font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
overflow-wrap:anywhere}
.issue.invalid .reason{background:#fdf3e6;color:#6b3a00}
.issue.skipped .reason{background:#eef0f3;color:#3b4350}
table.rows{width:100%;border-collapse:collapse;background:var(--card);font-size:13px}
.rows th,.rows td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line)}
.empty{color:var(--muted)}
.more{margin:14px 0 0;color:var(--muted);font-size:14px}
"""


# --- in S3 -----------------------------------------------------------------------------


def publish_gallery(
    store: Store,
    batch_id: str,
    rows: Iterable[ManifestRow] | None = None,
    records: Mapping[str, ImageRecord] | None = None,
    *,
    expires_in: int,
    max_images: int = MAX_EMBEDDED_IMAGES,
) -> PublishedGallery:
    """Write ``<prefix>/galleries/<batch_id>.html`` linking presigned URLs; return its own.

    ``rows`` (any iterable, read once) default to the batch's manifest; ``records`` already
    in memory are not re-read, and only the shown rows' records are read. Every link, the
    page's included, works for ``expires_in`` seconds; publishing again makes fresh ones.
    """
    spend = Spend(planned_usd=planned_of(store, batch_id))

    def tallied(rows: Iterable[ManifestRow]) -> Iterator[ManifestRow]:
        for row in rows:  # the spend, summed as the rows stream past once
            spend.add_row(row)
            yield row

    chosen = Selection.of(tallied(store.iter_manifest(batch_id) if rows is None else rows),
                          max_images=max_images)
    records = read_records(store, chosen.rows, records)
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
    manifest_key = store.layout.manifest(batch_id)
    page = render_gallery(batch_id, chosen, records, lambda uri: store.presign(uri, expires_in),
                          links_expire_at=expires_at, spend=spend,
                          manifest=(store.uri(manifest_key),
                                    store.presign(manifest_key, expires_in)))
    key = store.layout.gallery(batch_id)
    uri = store.put_bytes(key, page.encode("utf-8"), HTML_CONTENT_TYPE)
    return PublishedGallery(uri=uri, url=store.presign(key, expires_in), expires_at=expires_at)


# --- on disk ---------------------------------------------------------------------------


def write_local_gallery(
    store: Store,
    batch_id: str,
    out_dir: Path | str,
    *,
    rows: Iterable[ManifestRow] | None = None,
    records: Mapping[str, ImageRecord] | None = None,
    max_images: int = MAX_EMBEDDED_IMAGES,
) -> Path:
    """Download the batch's images and records under ``out_dir`` and write ``index.html``.

    Files keep their S3 layout below the prefix (``images/YYYY/MM/DD/<fp>.png``,
    ``metadata/…``); the page links them by relative path. Returns the page's path.
    """
    out = Path(out_dir)
    spend = Spend(planned_usd=planned_of(store, batch_id))

    def tallied(rows: Iterable[ManifestRow]) -> Iterator[ManifestRow]:
        for row in rows:  # the spend, summed as the rows stream past once
            spend.add_row(row)
            yield row

    chosen = Selection.of(tallied(store.iter_manifest(batch_id) if rows is None else rows),
                          max_images=max_images)
    records = read_records(store, chosen.rows, records)
    linked: dict[str, PurePosixPath] = {}

    def link(uri: str) -> str:
        # Rendering names every file the page needs; those are the ones downloaded.
        linked[uri] = linked.get(uri) or _local_path(store, uri)
        return quote(linked[uri].as_posix())

    page = render_gallery(batch_id, chosen, records, link,
                          manifest=(store.uri(store.layout.manifest(batch_id)), None))
    _download(store, linked, out)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _local_path(store: Store, uri: str) -> PurePosixPath:
    """Where the local copy of ``uri`` goes, relative to the page: its key below the prefix."""
    bucket, key = parse_s3_uri(uri)
    below = store.layout.below()
    if bucket == store.bucket and key.startswith(below):
        path = PurePosixPath(key[len(below):])
    else:  # written under another bucket or prefix: keep them apart
        path = PurePosixPath("other", bucket, key)
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"refusing to copy {uri}: its key does not name a file below the page")
    return path


def _download(store: Store, files: Mapping[str, PurePosixPath], out: Path) -> None:
    def fetch(item: tuple[str, PurePosixPath]) -> None:
        uri, relative = item
        target = out.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.read_bytes(uri))

    if not files:
        return
    with ThreadPoolExecutor(min(MAX_PARALLEL_READS, len(files)),
                            thread_name_prefix="flashgen-gallery") as pool:
        list(pool.map(fetch, files.items()))  # list(): re-raise the first failure
