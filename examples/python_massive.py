#!/usr/bin/env python3
"""The official Massive (formerly Polygon.io) Python client, unchanged, against TickStock.

TickStock speaks the Polygon/Massive stocks WebSocket protocol, so the client needs only to
be pointed at it (pip install massive):

  cargo run --release --bin tickstock
  python3 examples/python_massive.py                 # until Ctrl-C
  python3 examples/python_massive.py --trades 100    # stop after 100 trades (CI runs this)

With the loopback default (no key file) any API key is accepted.
"""
import argparse
import asyncio

from massive import WebSocketClient
from massive.websocket.models import EquityAgg, EquityTrade


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="127.0.0.1:8765", help="host:port")
    parser.add_argument("--key", default="local-key")
    parser.add_argument("--symbols", nargs="+", default=["AAPL", "MSFT"])
    parser.add_argument("--trades", type=int, default=0, help="stop after this many trades")
    args = parser.parse_args()
    topics = [f"{ch}.{sym}" for sym in args.symbols for ch in ("T", "A")]
    client = WebSocketClient(api_key=args.key, feed=args.server, market="stocks",
                             secure=False, subscriptions=topics)
    trades = 0

    async def handle(messages):
        nonlocal trades
        for message in messages:
            if isinstance(message, EquityTrade):
                trades += 1
                print(f"trade {message.symbol} {message.price} x {message.size}")
            elif isinstance(message, EquityAgg):
                print(f"bar   {message.symbol} o {message.open} c {message.close} "
                      f"v {message.volume}")
        if args.trades and trades >= args.trades:
            await client.close()

    try:
        asyncio.run(client.connect(handle))
    except KeyboardInterrupt:
        pass
    print(f"ok: {trades} trades")


if __name__ == "__main__":
    main()
