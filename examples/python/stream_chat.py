"""Stream a chat token by token from the first reachable personal runtime.

Env: LATTICE_GATEWAY_URL, LOVELACE_API_KEY (inference scope).
"""

from lattice_client import ComputeClient

with ComputeClient() as compute:  # credential and URL from the environment
    runtimes = compute.list_reachable_personal_runtimes()
    stream = compute.stream_chat_for_personal_runtime(
        runtimes[0], {"messages": [{"role": "user", "content": "..."}]}
    )
    for chunk in stream:
        print(chunk["choices"][0]["delta"].get("content") or "", end="", flush=True)
    print()
