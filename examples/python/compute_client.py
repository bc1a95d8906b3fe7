"""Run a chat on the first reachable personal runtime of the account.

Env: LATTICE_GATEWAY_URL, LOVELACE_API_KEY (inference scope).
"""

import os

from lattice_client import ComputeClient

compute = ComputeClient(credential={"kind": "apiKey", "apiKey": os.environ["LOVELACE_API_KEY"]})
runtimes = compute.list_reachable_personal_runtimes()
completion = compute.chat_complete_for_personal_runtime(
    runtimes[0], {"messages": [{"role": "user", "content": "..."}]}
)
print(completion["choices"][0]["message"]["content"])
