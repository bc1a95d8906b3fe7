// Run a chat on the first reachable personal runtime of the account.
// Env: LATTICE_GATEWAY_URL, LOVELACE_API_KEY (inference scope).
import { ComputeClient } from "@lovelace-ai/compute-client";
const compute = new ComputeClient({ credential: { kind: "apiKey", apiKey: process.env.LOVELACE_API_KEY! } });
const runtimes = await compute.listReachablePersonalRuntimes();
const completion = await compute.chatCompleteForPersonalRuntime(runtimes[0], { messages: [{ role: "user", content: "..." }] });
console.log(completion.choices[0]?.message.content);
