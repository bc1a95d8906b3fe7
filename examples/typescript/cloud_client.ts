// Create a personal runtime and mint the one-time command its user runs to pair it.
// Env: LATTICE_GATEWAY_URL, LOVELACE_API_KEY (manage scope).
import { createLatticeCloudClient } from "@lovelace-ai/compute";
const lattice = createLatticeCloudClient({ baseUrl: process.env.LATTICE_GATEWAY_URL!, apiKey: process.env.LOVELACE_API_KEY! });
const runtime = await lattice.personalRuntimes.create({ displayName: "Mac Studio in the office", executionBackend: "local-model" });
const bootstrap = await lattice.personalRuntimes.createBootstrapToken(runtime.latticeId, { ttlSeconds: 600 });
console.log(bootstrap.command);
