"""One-off steps after upgrading a deployed stage.

    python -m infra.upgrade [--table pqh-dev-usage]

Moves the user weights that versions before December 2026 kept on items of
their own onto the users' counters, where submissions now read them (until
this runs, those users are served with weight 1). Safe to run twice, and while
the service runs: a weight set since the upgrade is kept. Uses the default AWS
credentials, or the emulator named by AWS_ENDPOINT_URL. The table defaults to
PQH_USAGE_TABLE.
"""

from __future__ import annotations

import argparse
import os

from chalicelib import aws
from chalicelib.adapters.dynamo import DynamoUsageStore


def main(argv: list[str] | None = None) -> list[tuple[str, int]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default=os.environ.get("PQH_USAGE_TABLE"), help="the stage's usage table")
    args = parser.parse_args(argv)
    if not args.table:
        parser.error("name the usage table: --table, or PQH_USAGE_TABLE")
    moved = DynamoUsageStore(aws.client("dynamodb"), args.table).adopt_old_weights()
    for user, weight in moved:
        print(f"weight {weight} of {user} moved onto their counters")
    print(f"{len(moved)} weights moved")
    return moved


if __name__ == "__main__":
    main()
