#!/usr/bin/env python3
"""Historical bars from TickStock's aggregates endpoint with the official `massive` REST client
(pip install massive), unchanged: only its base URL points at TickStock.

    python3 examples/python_rest.py --base http://127.0.0.1:8765 --key KEY \
        --symbol SYM0001 --from 2026-11-24 --to 2026-11-24 [--multiplier 5] [--limit 1000]

The server needs `[database]` (docs/database.md). The key travels in the Authorization
header, as the client always sends it. `list_aggs` follows `next_url` page by page, so
`--limit` only sets the page size. Prints one JSON object: the bars, and how many pages.
"""

import argparse
import json

from massive import RESTClient


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="http://127.0.0.1:8765")
    parser.add_argument("--key", default="dashboard")
    parser.add_argument("--symbol", required=True)
    parser.add_argument("--from", dest="from_", required=True, help="YYYY-MM-DD or Unix ms")
    parser.add_argument("--to", required=True, help="YYYY-MM-DD or Unix ms")
    parser.add_argument("--multiplier", type=int, default=1)
    parser.add_argument("--timespan", default="minute", choices=["minute", "second"])
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--sort", default="asc", choices=["asc", "desc"])
    args = parser.parse_args()

    client = RESTClient(api_key=args.key, base=args.base, retries=0)
    pages = 0
    original = client._get

    def counting_get(*a, **k):  # only to report how many pages list_aggs fetched
        nonlocal pages
        pages += 1
        return original(*a, **k)

    client._get = counting_get
    bars = [
        {"t": a.timestamp, "o": a.open, "h": a.high, "l": a.low, "c": a.close,
         "v": a.volume, "vw": a.vwap, "n": a.transactions}
        for a in client.list_aggs(args.symbol, args.multiplier, args.timespan, args.from_,
                                  args.to, limit=args.limit, sort=args.sort)
    ]
    # get_aggs: one request, the first page only, as a chart's first paint would use it.
    first = client.get_aggs(args.symbol, args.multiplier, args.timespan, args.from_, args.to,
                            limit=args.limit, sort=args.sort)
    print(json.dumps({"bars": bars, "pages": pages, "first_page": len(first)}))


if __name__ == "__main__":
    main()
