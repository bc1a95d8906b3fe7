/**
 * Both packages against a real gateway with a paired fake daemon, started by
 * tests/sdk/test_typescript.py and passed in through LATTICE_TEST_* variables:
 *   LATTICE_TEST_GATEWAY_URL, LATTICE_TEST_API_KEY (both scopes; the account has one
 *   reachable runtime answering LATTICE_TEST_REPLY), LATTICE_TEST_ACCESS_TOKEN (an OAuth
 *   token of the same account with only the inference scope).
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  ComputeClient,
  InsufficientScopesError,
  InvalidApiKeyError,
  InvalidRequestError,
  RuntimeNotFoundError,
  RuntimeRevokedError,
  RuntimeUnreachableError,
} from "@lovelace-ai/compute-client";
import { createLatticeCloudClient } from "@lovelace-ai/compute";

const gatewayUrl = process.env.LATTICE_TEST_GATEWAY_URL ?? "";
const apiKey = process.env.LATTICE_TEST_API_KEY ?? "";
const accessToken = process.env.LATTICE_TEST_ACCESS_TOKEN ?? "";
const reply = process.env.LATTICE_TEST_REPLY ?? "";
const skip = gatewayUrl ? false : "no gateway: run through tests/sdk/test_typescript.py";
const MANAGE = "lattice:compute:personal_runtime:manage";
const CHAT = { messages: [{ role: "user" as const, content: "Say hello" }] };

describe("against a real gateway", { skip }, () => {
  const compute = (): ComputeClient => new ComputeClient({ baseUrl: gatewayUrl, credential: { kind: "apiKey", apiKey }, maxRetries: 0 });
  const lattice = () => createLatticeCloudClient({ baseUrl: gatewayUrl, apiKey, maxRetries: 0 });

  it("lists the reachable runtime and chats on it", async () => {
    const runtimes = await compute().listReachablePersonalRuntimes();
    assert.equal(runtimes.length, 1);
    const completion = await compute().chatCompleteForPersonalRuntime(runtimes[0], CHAT);
    assert.equal(completion.object, "chat.completion");
    assert.equal(completion.choices[0]?.message.content, reply);
    const models = await compute().models();
    assert.ok(models.some((m) => m.id.includes(runtimes[0]!.latticeId)));
  });

  it("streams chunk by chunk", async () => {
    const [runtime] = await compute().listReachablePersonalRuntimes();
    const stream = await compute().streamChatForPersonalRuntime(runtime, CHAT);
    const parts: string[] = [];
    for await (const chunk of stream) {
      assert.equal(chunk.object, "chat.completion.chunk");
      parts.push(chunk.choices[0]?.delta.content ?? "");
    }
    assert.equal(parts.join(""), reply);
    assert.ok(parts.length > 3, "word by word, not one blob");
  });

  it("manages a runtime: create, token, get, revoke", async () => {
    const runtime = await lattice().personalRuntimes.create({ displayName: "ts box", executionBackend: "local-model" });
    assert.equal(runtime.status, "unpaired");
    assert.match(runtime.latticeId, /^lat_/);
    assert.match(runtime.accountId, /^acct_/);
    assert.match(runtime.createdAt, /Z$/);
    const bootstrap = await lattice().personalRuntimes.createBootstrapToken(runtime.latticeId, { ttlSeconds: 600 });
    assert.match(bootstrap.bootstrapToken, /^plrt_v1/);
    assert.equal(bootstrap.command, `lattice-ctl relay connect --gateway '${gatewayUrl}' --bootstrap-token '${bootstrap.bootstrapToken}'`);
    await assert.rejects(compute().chatCompleteForPersonalRuntime(runtime, CHAT), RuntimeUnreachableError);
    assert.equal((await lattice().personalRuntimes.get(runtime)).displayName, "ts box");
    assert.equal((await lattice().personalRuntimes.revoke(runtime.latticeId)).status, "revoked");
    await assert.rejects(compute().chatCompleteForPersonalRuntime(runtime, CHAT), (e: unknown) => e instanceof RuntimeRevokedError && e.status === 403);
    const listed = await lattice().personalRuntimes.list();
    assert.equal(listed.find((r) => r.latticeId === runtime.latticeId)?.status, "revoked");
  });

  it("maps the gateway's errors", async () => {
    await assert.rejects(lattice().personalRuntimes.get("lat_does_not_exist"), RuntimeNotFoundError);
    await assert.rejects(lattice().personalRuntimes.create({ displayName: "x", executionBackend: "gpu-farm" as "local-model" }), InvalidRequestError);
    const bad = new ComputeClient({ baseUrl: gatewayUrl, credential: { kind: "apiKey", apiKey: "sk_" + "x".repeat(43) } });
    await assert.rejects(bad.listPersonalRuntimes(), (e: unknown) => e instanceof InvalidApiKeyError && e.status === 401 && e.code === "invalid_api_key");
  });

  it("an OAuth token without the manage scope may list and chat, not manage", async () => {
    const oauth = new ComputeClient({ baseUrl: gatewayUrl, credential: { kind: "oauth", accessToken } });
    const runtimes = await oauth.listReachablePersonalRuntimes();
    const completion = await oauth.chatCompleteForPersonalRuntime(runtimes[0], CHAT);
    assert.equal(completion.choices[0]?.message.content, reply);
    const cloud = createLatticeCloudClient({ baseUrl: gatewayUrl, credential: { kind: "oauth", accessToken } });
    assert.ok((await cloud.personalRuntimes.list()).length >= 1);
    const latticeId = runtimes[0]!.latticeId;
    for (const attempt of [
      () => cloud.personalRuntimes.create({ displayName: "nope", executionBackend: "local-model" }),
      () => cloud.personalRuntimes.createBootstrapToken(latticeId, { ttlSeconds: 600 }),
      () => cloud.personalRuntimes.revoke(latticeId),
    ]) {
      await assert.rejects(attempt(), (e: unknown) => e instanceof InsufficientScopesError && e.status === 403 && e.message.includes(MANAGE));
    }
    assert.equal((await cloud.personalRuntimes.get(latticeId)).status, "reachable");
  });
});
