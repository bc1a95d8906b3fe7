""""Sign in with Lovelace": act for a user with their OAuth access token.

A token with only the inference scope may list and chat; creating, revoking and minting
bootstrap tokens answer ``insufficient_scopes``.

Env: LATTICE_GATEWAY_URL, LOVELACE_ACCESS_TOKEN.
"""

import os

from lattice_client import ComputeClient, InsufficientScopesError, create_lattice_cloud_client

access_token = os.environ["LOVELACE_ACCESS_TOKEN"]
compute = ComputeClient(credential={"kind": "oauth", "accessToken": access_token})
runtimes = compute.list_reachable_personal_runtimes()
print(f"reachable: {len(runtimes)}")
completion = compute.chat_complete_for_personal_runtime(
    runtimes[0], {"messages": [{"role": "user", "content": "..."}]}
)
print(f"chat: {completion['choices'][0]['message']['content']}")

lattice = create_lattice_cloud_client(credential={"kind": "oauth", "accessToken": access_token})
attempts = {
    "create": lambda: lattice.personal_runtimes.create(display_name="not allowed"),
    "bootstrap": lambda: lattice.personal_runtimes.create_bootstrap_token(runtimes[0]),
    "revoke": lambda: lattice.personal_runtimes.revoke(runtimes[0]),
}
for what, attempt in attempts.items():
    try:
        attempt()
        print(f"{what}: allowed")
    except InsufficientScopesError as error:
        print(f"{what}: {error.code} ({error.status}): {error.message}")
