"""Command line: run one event against an index without Lambda.

    python -m kdbuckets {build,query,write} EVENT.json --bucket INDEX_BUCKET [--prefix P]

The same ``kdbuckets.service`` entry points the Lambda handlers call; the response is
printed as JSON, an error as ``Type: message`` on stderr with exit status 1. Credentials and
endpoint come from boto3's usual chain (``AWS_ENDPOINT_URL_S3`` for a local moto server).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import service
from .errors import KdBucketsError
from .searcher import Searcher
from .storage import ObjectStore


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdbuckets", description=__doc__.splitlines()[0])
    parser.add_argument("operation", choices=("build", "query", "write"))
    parser.add_argument("event", help="path to a JSON event (see events/)")
    parser.add_argument("--bucket", required=True, help="the index bucket")
    parser.add_argument("--prefix", default="", help="key prefix of the indexes in the bucket")
    args = parser.parse_args(argv)
    with open(args.event, encoding="utf-8") as f:
        event = json.load(f)
    store = ObjectStore(args.bucket, args.prefix)
    try:
        if args.operation == "build":
            response = service.build(event, store)
        elif args.operation == "query":
            response = service.query(event, Searcher(store))
        else:
            response = service.write(event, store)
    except KdBucketsError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(response, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
