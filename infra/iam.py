"""The least-privilege IAM policy for flashgen's workers (shown in infra/PRODUCTION.md).

    python -m flashgen.infra.iam images-prod flashgen [KMS_KEY_ARN] > flashgen-worker-policy.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def least_privilege_policy(bucket: str, prefix: str, kms_key_arn: str | None = None
                           ) -> dict[str, Any]:
    """What a worker needs: read and write objects under ``<prefix>/``, list the bucket.

    - ``s3:GetObject`` covers GetObject and HeadObject; ``s3:PutObject`` covers the
      conditional writes (If-None-Match claims, If-Match ledger updates) and checksums.
    - ``s3:ListBucket`` lists the inbox and the ledger (the plan's census), and lets S3
      answer 404 (not 403) for a missing ledger entry or cursor, which flashgen relies on.
      S3 decides that answer without the request's prefix, so a ``s3:prefix`` condition
      would turn every miss into a 403: give flashgen its own bucket if key names
      elsewhere in it are secret.
    - Nothing deletes: flashgen never removes an object, and bucket settings belong to
      ``flashgen provision``, run with administrator credentials.
    """
    statements: list[dict[str, Any]] = [
        {"Sid": "ListTheBucket", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": [f"arn:aws:s3:::{bucket}"]},
        {"Sid": "ReadAndWriteUnderThePrefix", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/{prefix.strip('/')}/*"]},
    ]
    if kms_key_arn:
        statements.append({"Sid": "UseTheBucketKey", "Effect": "Allow",
                           "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                           "Resource": [kms_key_arn]})
    return {"Version": "2012-10-17", "Statement": statements}


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m flashgen.infra.iam BUCKET PREFIX [KMS_KEY_ARN]")
    print(json.dumps(least_privilege_policy(*sys.argv[1:]), indent=2))
