#!/usr/bin/env python3
"""A raw WebSocket client of TickStock, with the `websockets` package (pip install websockets).

What a desk's client does, step by step (docs/protocol.md):
  1. connect, authenticate with the first message (never a token in the URL);
  2. subscribe with a snapshot: the latest bar and trade of each symbol first, then live;
  3. set a filter;
  4. keep the highest `seq` seen; after a disconnect, reconnect, subscribe again and
     `resume` from there: no gap, no duplicate.

Run the server (`cargo run --release --bin tickstock`), then:
  python3 examples/python_websockets.py                # AAPL and MSFT, until Ctrl-C
  python3 examples/python_websockets.py --trades 200   # stop after 200 trades (CI runs this)

It disconnects after `--reconnect-after` trades (100) to show the resume.

The synthetic market's busiest symbols are named AAPL, MSFT, NVDA, ... With the loopback
default (no key file) any token is accepted. The script checks what the protocol promises
(strict `seq` order, no duplicate across the reconnect) and exits non-zero if it breaks.
"""
import argparse
import asyncio
import json
import sys

import websockets


async def connect(url, token):
    ws = await websockets.connect(url, max_size=16 * 1024 * 1024)
    connected = json.loads(await ws.recv())
    assert connected[0]["status"] == "connected", connected
    await ws.send(json.dumps({"action": "auth", "params": token}))
    auth = json.loads(await ws.recv())
    if auth[0]["status"] != "auth_success":
        sys.exit(f"authentication failed: {auth}")
    return ws


async def run(args):
    topics = ",".join(f"{ch}.{sym}" for sym in args.symbols for ch in ("T", "A", "AM"))
    seen = set()  # every seq received: a duplicate is a broken promise
    last_seq = 0  # the highest live seq: where a resume starts
    trades = 0

    def take(event, snapshot=False):
        nonlocal last_seq, trades
        seq = event["seq"]
        if seq in seen:
            sys.exit(f"seq {seq} received twice")
        seen.add(seq)
        if not snapshot:
            if seq <= last_seq:
                sys.exit(f"seq {seq} after {last_seq}: out of order")
            last_seq = seq
        if event["ev"] == "T":
            trades += 1
            print(f"T  {event['sym']:6} {event['p']:>10} x {event['s']:<6} seq {seq}")
        else:
            kind = "snapshot " if snapshot else ""
            print(f"{event['ev']:2} {event['sym']:6} {kind}o {event['o']} c {event['c']} "
                  f"v {event['v']} seq {seq}")

    # First session: a snapshot, then live, then a filter.
    ws = await connect(args.url, args.token)
    await ws.send(json.dumps({"action": "subscribe", "params": topics, "snapshot": True}))
    in_snapshot = True
    while trades < min(args.reconnect_after, args.trades) or in_snapshot:
        for event in json.loads(await ws.recv()):
            if event["ev"] == "status":
                print(f"status {event['status']}: {event.get('message', '')}"
                      f"{' count ' + str(event['count']) if 'count' in event else ''}")
                if event["status"] == "snapshot":
                    in_snapshot = False
                continue
            take(event, snapshot=in_snapshot)
    await ws.send(json.dumps({"action": "filter", "params": {"min_volume": 1}}))

    # A disconnect: whatever happens meanwhile is resumed from the history.
    await ws.close()
    print(f"disconnected at seq {last_seq}; reconnecting")
    await asyncio.sleep(0.5)
    ws = await connect(args.url, args.token)
    await ws.send(json.dumps({"action": "subscribe", "params": topics}))
    await ws.send(json.dumps({"action": "resume", "params": {"from_seq": last_seq + 1}}))
    resumed = False
    while trades < args.trades or not resumed:
        for event in json.loads(await ws.recv()):
            if event["ev"] == "status":
                if event["status"] == "resumed":
                    resumed = True
                    print(f"resumed from {event['from_seq']} to {event['to_seq']}")
                elif event["status"] == "resume_failed":
                    sys.exit(f"resume failed: {event}")
                continue
            take(event)
    await ws.close()
    print(f"ok: {trades} trades, {len(seen)} events, strict seq order, no duplicate")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/stocks")
    parser.add_argument("--token", default="local-token")
    parser.add_argument("--symbols", nargs="+", default=["AAPL", "MSFT"])
    parser.add_argument("--trades", type=int, default=sys.maxsize,
                        help="stop after this many trades (default: run until Ctrl-C)")
    parser.add_argument("--reconnect-after", type=int, default=100,
                        help="disconnect after this many trades, then resume")
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
