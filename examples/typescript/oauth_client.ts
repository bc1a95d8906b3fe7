// "Sign in with Lovelace": act for a user with their OAuth access token. A token with only
// the inference scope may list and chat, but creating, revoking and minting bootstrap
// tokens answer insufficient_scopes.
// Env: LATTICE_GATEWAY_URL, LOVELACE_ACCESS_TOKEN.
import { ComputeClient, InsufficientScopesError } from "@lovelace-ai/compute-client";
import { createLatticeCloudClient } from "@lovelace-ai/compute";

const accessToken = process.env.LOVELACE_ACCESS_TOKEN!;
const compute = new ComputeClient({ credential: { kind: "oauth", accessToken } });
const runtimes = await compute.listReachablePersonalRuntimes();
console.log(`reachable: ${runtimes.length}`);
const completion = await compute.chatCompleteForPersonalRuntime(runtimes[0], { messages: [{ role: "user", content: "..." }] });
console.log(`chat: ${completion.choices[0]?.message.content}`);

const lattice = createLatticeCloudClient({ baseUrl: process.env.LATTICE_GATEWAY_URL!, credential: { kind: "oauth", accessToken } });
const attempts: Array<[string, () => Promise<unknown>]> = [
  ["create", () => lattice.personalRuntimes.create({ displayName: "not allowed", executionBackend: "local-model" })],
  ["bootstrap", () => lattice.personalRuntimes.createBootstrapToken(runtimes[0]!.latticeId, { ttlSeconds: 600 })],
  ["revoke", () => lattice.personalRuntimes.revoke(runtimes[0]!.latticeId)],
];
for (const [what, attempt] of attempts) {
  try {
    await attempt();
    console.log(`${what}: allowed`);
  } catch (error) {
    if (!(error instanceof InsufficientScopesError)) throw error;
    console.log(`${what}: ${error.code} (${error.status}): ${error.message}`);
  }
}
