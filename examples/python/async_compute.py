"""The asyncio client: a chat and a stream on the first reachable personal runtime.

Env: LATTICE_GATEWAY_URL, LOVELACE_API_KEY (inference scope).
"""

import asyncio

from lattice_client import AsyncComputeClient


async def main() -> None:
    async with AsyncComputeClient() as compute:
        runtimes = await compute.list_reachable_personal_runtimes()
        request = {"messages": [{"role": "user", "content": "..."}]}
        completion = await compute.chat_complete_for_personal_runtime(runtimes[0], request)
        print(completion["choices"][0]["message"]["content"])
        stream = await compute.stream_chat_for_personal_runtime(runtimes[0], request)
        parts = [chunk["choices"][0]["delta"].get("content") or "" async for chunk in stream]
        print("".join(parts))


asyncio.run(main())
