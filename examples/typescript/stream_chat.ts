// Stream a chat token by token from the first reachable personal runtime.
// Env: LATTICE_GATEWAY_URL, LOVELACE_API_KEY (inference scope).
import { ComputeClient } from "@lovelace-ai/compute-client";
const compute = new ComputeClient({ credential: { kind: "apiKey", apiKey: process.env.LOVELACE_API_KEY! } });
const runtimes = await compute.listReachablePersonalRuntimes();
const stream = await compute.streamChatForPersonalRuntime(runtimes[0], { messages: [{ role: "user", content: "..." }] });
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta.content ?? "");
}
process.stdout.write("\n");
