"""Create a personal runtime and mint the one-time command its user runs to pair it.

Env: LATTICE_GATEWAY_URL, LOVELACE_API_KEY (manage scope).
"""

import os

from lattice_client import create_lattice_cloud_client

lattice = create_lattice_cloud_client(
    base_url=os.environ["LATTICE_GATEWAY_URL"], api_key=os.environ["LOVELACE_API_KEY"]
)
runtime = lattice.personal_runtimes.create(
    display_name="Mac Studio in the office", execution_backend="local-model"
)
bootstrap = lattice.personal_runtimes.create_bootstrap_token(runtime.lattice_id, ttl_seconds=600)
print(bootstrap.command)
