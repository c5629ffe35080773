"""A slow reader in a process of its own: a tcp listener that reads one message per interval.

``python slow_reader.py INTERVAL`` prints its port, serves one comm, reading
a message every INTERVAL seconds until the peer closes, then prints how many
messages it read and exits.
"""

from __future__ import annotations

import asyncio
import sys

import comm_core
from comm_core import Comm, CommClosedError


async def main(interval: float) -> None:
    done = asyncio.get_running_loop().create_future()

    async def slow(comm: Comm) -> None:
        count = 0
        try:
            while True:
                await comm.read()
                count += 1
                await asyncio.sleep(interval)  # the slow reader itself
        except CommClosedError:
            pass
        finally:
            await comm.close()
            if not done.done():
                done.set_result(count)

    async with comm_core.listen("tcp://127.0.0.1:0", slow) as listener:
        print(listener.port, flush=True)  # type: ignore[attr-defined]
        count = await asyncio.wait_for(done, 600)
    print(count, flush=True)


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
