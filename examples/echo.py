"""Echo messages over comm's in-process transport: listen, connect, send, read, close.

Run it with ``python examples/echo.py`` (with comm-core and comm-inproc
installed), or ``nox -s demo``.
"""

import asyncio

import comm_core


async def echo(comm: comm_core.Comm) -> None:
    """Serve one connection: send every message back until the peer closes."""
    async for msg in comm:
        await comm.write(msg)


async def main() -> None:
    async with comm_core.listen("inproc://", echo) as listener:
        print("listening on", listener.contact_address)
        async with await comm_core.connect(listener.contact_address) as comm:
            for msg in ["hello", {"op": "ping", "n": 1}, [1, 2, 3]]:
                await comm.write(msg)
                print("sent", msg, "-> got", await comm.read())


if __name__ == "__main__":
    asyncio.run(main())
