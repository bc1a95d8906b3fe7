/** Both packages against an in-process fake `fetch`: errors, SSE, retries, request shapes. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import * as client from "@lovelace-ai/compute-client";
import { ComputeClient, LatticeApiError, type PersonalRuntime } from "@lovelace-ai/compute-client";
import { createLatticeCloudClient } from "@lovelace-ai/compute";

const BASE = "http://gateway.test";
const RUNTIME: PersonalRuntime = {
  latticeId: "lat_1",
  accountId: "acct_1",
  displayName: "Mac",
  executionBackend: "local-model",
  status: "reachable",
  createdAt: "2026-01-01T00:00:00.000Z",
  updatedAt: "2026-01-01T00:00:00.000Z",
};
const COMPLETION = { id: "c1", object: "chat.completion", created: 1, model: "m", choices: [{ index: 0, message: { role: "assistant", content: "hi" }, finish_reason: "stop" }] };

type Answer = Response | Error | ((request: Request) => Response);

interface Sent {
  method: string;
  path: string;
  headers: Headers;
  body: unknown;
}

/** A fetch that answers from a list (the last answer repeats) and records every request. */
function fakeFetch(...answers: Answer[]): { fetch: typeof fetch; sent: Sent[] } {
  const sent: Sent[] = [];
  const fetchImpl = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const request = new Request(input, init);
    const text = await request.text();
    sent.push({ method: request.method, path: new URL(request.url).pathname, headers: request.headers, body: text ? JSON.parse(text) : undefined });
    // The last answer repeats. A clone tees the body, and cancelling one branch of a tee
    // waits for the other: hand out a fresh Response with the bytes instead.
    const last = answers.length === 1;
    const answer = last ? answers[0]! : answers.shift()!;
    if (answer instanceof Error) throw answer;
    if (typeof answer === "function") return answer(request);
    if (!last) return answer;
    const { status, headers } = answer;
    return new Response(await answer.clone().arrayBuffer(), { status, headers });
  };
  return { fetch: fetchImpl as typeof fetch, sent };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

function envelope(code: string, message = "nope", param: string | null = null): unknown {
  return { error: { message, type: "x", param, code } };
}

function compute(fetchImpl: typeof fetch, maxRetries = 2): ComputeClient {
  const c = new ComputeClient({ credential: { kind: "apiKey", apiKey: "sk_test" }, baseUrl: BASE, fetch: fetchImpl, maxRetries });
  (c as unknown as { transport: { sleep: (s: number) => Promise<void> } }).transport.sleep = async () => {};
  return c;
}

function sse(...events: string[]): Response {
  return new Response(events.map((e) => `${e}\n\n`).join(""), { status: 200, headers: { "content-type": "text/event-stream" } });
}

const chunk = (text: string): string => JSON.stringify({ object: "chat.completion.chunk", choices: [{ index: 0, delta: { content: text }, finish_reason: null }] });

const ERROR_TABLE: Array<[string, number, new (...args: never[]) => LatticeApiError]> = [
  ["invalid_api_key", 401, client.InvalidApiKeyError],
  ["insufficient_scopes", 403, client.InsufficientScopesError],
  ["runtime_not_found", 404, client.RuntimeNotFoundError],
  ["runtime_revoked", 403, client.RuntimeRevokedError],
  ["runtime_unreachable", 503, client.RuntimeUnreachableError],
  ["invalid_request", 400, client.InvalidRequestError],
  ["request_too_large", 413, client.RequestTooLargeError],
  ["provider_error", 502, client.ProviderError],
  ["runtime_timeout", 504, client.RuntimeTimeoutError],
  ["bootstrap_token_expired", 401, client.BootstrapTokenExpiredError],
  ["bootstrap_token_used", 409, client.BootstrapTokenUsedError],
  ["invalid_bootstrap_token", 401, client.InvalidBootstrapTokenError],
  ["rate_limited", 429, client.RateLimitedError],
  ["some_future_code", 418, client.LatticeApiError],
];

describe("errors", () => {
  for (const [code, status, Cls] of ERROR_TABLE) {
    it(`${code} -> ${Cls.name}`, async () => {
      const { fetch, sent } = fakeFetch(json(status, envelope(code, "said why", "messages"), { "x-should-retry": "false", "retry-after": "3" }));
      const error = await compute(fetch).chatCompleteForPersonalRuntime("lat_1", { messages: [] }).then(
        () => assert.fail("expected an error"),
        (e: unknown) => e,
      );
      assert.ok(error instanceof LatticeApiError);
      assert.equal(error.constructor, Cls);
      assert.deepEqual([error.code, error.status, error.message, error.param], [code, status, "said why", "messages"]);
      assert.equal(sent.length, 1);
      if (error instanceof client.RateLimitedError) assert.equal(error.retryAfter, 3);
    });
  }

  it("a body that is not an envelope keeps the status", async () => {
    const { fetch } = fakeFetch(new Response("<html>bad gateway</html>", { status: 502 }));
    await assert.rejects(compute(fetch).listPersonalRuntimes(), (e: unknown) => {
      assert.ok(e instanceof LatticeApiError && e.constructor === LatticeApiError);
      assert.equal(e.status, 502);
      assert.match(e.message, /bad gateway/);
      return true;
    });
  });
});

describe("requests", () => {
  it("sends the api key, the model string and stream=false", async () => {
    const { fetch, sent } = fakeFetch(json(200, COMPLETION));
    const completion = await compute(fetch).chatCompleteForPersonalRuntime(RUNTIME, { messages: [{ role: "user", content: "x" }], temperature: 0 }, { localModel: "llama3.2:3b" });
    assert.equal(completion.choices[0]?.message.content, "hi");
    assert.equal(sent[0]?.headers.get("x-api-key"), "sk_test");
    assert.equal(sent[0]?.headers.get("authorization"), null);
    assert.deepEqual(sent[0]?.body, { messages: [{ role: "user", content: "x" }], temperature: 0, model: "lattice:personal:lat_1/llama3.2:3b", stream: false });
  });

  it("sends an oauth token as Bearer and filters reachable runtimes", async () => {
    const runtimes = ["unpaired", "reachable", "offline", "revoked"].map((status) => ({ ...RUNTIME, latticeId: `lat_${status}`, status }));
    const { fetch, sent } = fakeFetch(json(200, { runtimes }));
    const c = new ComputeClient({ credential: { kind: "oauth", accessToken: "tok_abc" }, baseUrl: BASE, fetch });
    const reachable = await c.listReachablePersonalRuntimes();
    assert.deepEqual(reachable.map((r) => r.latticeId), ["lat_reachable"]);
    assert.equal(sent[0]?.headers.get("authorization"), "Bearer tok_abc");
  });

  it("explains a missing runtime, URL or credential", async () => {
    const { fetch } = fakeFetch(json(200, COMPLETION));
    await assert.rejects(compute(fetch).chatCompleteForPersonalRuntime(undefined, { messages: [] }), /empty list/);
    const saved = { url: process.env.LATTICE_GATEWAY_URL, key: process.env.LOVELACE_API_KEY };
    delete process.env.LATTICE_GATEWAY_URL;
    delete process.env.LOVELACE_API_KEY;
    try {
      assert.throws(() => new ComputeClient({ credential: { kind: "apiKey", apiKey: "k" } }), client.LatticeConfigurationError);
      assert.throws(() => new ComputeClient({ baseUrl: BASE }), /LOVELACE_API_KEY/);
      assert.throws(() => createLatticeCloudClient({ baseUrl: BASE, apiKey: "" }), /credential/);
      process.env.LATTICE_GATEWAY_URL = `${BASE}/`;
      process.env.LOVELACE_API_KEY = "sk_env";
      assert.equal(new ComputeClient().baseUrl, BASE);
    } finally {
      if (saved.url === undefined) delete process.env.LATTICE_GATEWAY_URL;
      else process.env.LATTICE_GATEWAY_URL = saved.url;
      if (saved.key === undefined) delete process.env.LOVELACE_API_KEY;
      else process.env.LOVELACE_API_KEY = saved.key;
    }
  });

  it("cloud client: paths and bodies", async () => {
    const { fetch, sent } = fakeFetch((request) => {
      const path = new URL(request.url).pathname;
      if (path.endsWith("/bootstrap-tokens")) return json(201, { latticeId: "lat_1", bootstrapToken: "plrt_v1_t", expiresAt: "2026", command: "lattice-ctl x" });
      if (request.method === "POST") return json(201, { runtime: { ...RUNTIME, status: "unpaired" } });
      if (request.method === "DELETE") return json(200, { runtime: { ...RUNTIME, status: "revoked" } });
      if (path === "/v1/personal-runtimes/lat_1") return json(200, { runtime: RUNTIME });
      return json(200, { runtimes: [RUNTIME] });
    });
    const lattice = createLatticeCloudClient({ baseUrl: BASE, apiKey: "sk_test", fetch });
    const runtime = await lattice.personalRuntimes.create({ displayName: "Mac", executionBackend: "local-model" });
    assert.equal(runtime.status, "unpaired");
    const bootstrap = await lattice.personalRuntimes.createBootstrapToken(runtime.latticeId, { ttlSeconds: 600 });
    assert.equal(bootstrap.command, "lattice-ctl x");
    assert.equal((await lattice.personalRuntimes.get("lat_1")).status, "reachable");
    assert.equal((await lattice.personalRuntimes.list()).length, 1);
    assert.equal((await lattice.personalRuntimes.revoke(runtime)).status, "revoked");
    assert.deepEqual(sent.map((s) => [s.method, s.path, s.body]), [
      ["POST", "/v1/personal-runtimes", { displayName: "Mac", executionBackend: "local-model" }],
      ["POST", "/v1/personal-runtimes/lat_1/bootstrap-tokens", { ttlSeconds: 600 }],
      ["GET", "/v1/personal-runtimes/lat_1", undefined],
      ["GET", "/v1/personal-runtimes", undefined],
      ["DELETE", "/v1/personal-runtimes/lat_1", undefined],
    ]);
  });
});

describe("streaming", () => {
  it("ignores keep-alives, stops at [DONE]", async () => {
    const { fetch, sent } = fakeFetch(sse(": keep-alive", `data: ${chunk("he")}`, ":", `data:${chunk("llo")}`, "data: [DONE]", `data: ${chunk("after")}`));
    const stream = await compute(fetch).streamChatForPersonalRuntime("lat_1", { messages: [] });
    let text = "";
    for await (const part of stream) text += part.choices[0]?.delta.content ?? "";
    assert.equal(text, "hello");
    assert.equal((sent[0]?.body as { stream: boolean }).stream, true);
  });

  it("parses events split across byte chunks, CRLF and multi-line data", async () => {
    const payload = `data: ${chunk("a")}\r\n\r\ndata: {"object":"chat.completion.chunk",\ndata: "choices":[{"index":0,"delta":{"content":"b"}}]}\n\ndata: [DONE]\n\n`;
    const bytes = new TextEncoder().encode(payload);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < bytes.length; i += 7) controller.enqueue(bytes.slice(i, i + 7));
        controller.close();
      },
    });
    const { fetch } = fakeFetch(() => new Response(body, { status: 200 }));
    const parts: string[] = [];
    for await (const part of await compute(fetch).streamChatForPersonalRuntime("lat_1", { messages: [] })) {
      parts.push(part.choices[0]?.delta.content ?? "");
    }
    assert.deepEqual(parts, ["a", "b"]);
  });

  it("throws the typed error of an in-stream error event", async () => {
    const { fetch } = fakeFetch(sse(`data: ${chunk("a")}`, `data: ${JSON.stringify(envelope("provider_error", "ollama: model not found"))}`));
    const parts: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const part of await compute(fetch).streamChatForPersonalRuntime("lat_1", { messages: [] })) parts.push(part.choices[0]?.delta.content ?? "");
      })(),
      (e: unknown) => e instanceof client.ProviderError && e.status === 502 && /ollama/.test(e.message),
    );
    assert.deepEqual(parts, ["a"]);
  });

  it("leaving the loop early aborts the request (the gateway then cancels the job)", async () => {
    let signal: AbortSignal | undefined;
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        controller.enqueue(new TextEncoder().encode(`data: ${chunk("x")}\n\n`));
      },
    });
    const fetchImpl = (async (_input: string | URL | Request, init?: RequestInit) => {
      signal = init?.signal ?? undefined;
      return new Response(endless, { status: 200 });
    }) as typeof fetch;
    const stream = await compute(fetchImpl).streamChatForPersonalRuntime("lat_1", { messages: [] });
    let seen = 0;
    for await (const _part of stream) {
      if (++seen === 2) break;
    }
    assert.equal(seen, 2);
    assert.equal(signal?.aborted, true);
  });

  it("a body cut short before [DONE] throws StreamProtocolError after the chunks", async () => {
    const { fetch } = fakeFetch(sse(`data: ${chunk("a")}`, `data: ${chunk("b")}`));
    const parts: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const part of await compute(fetch).streamChatForPersonalRuntime("lat_1", { messages: [] })) parts.push(part.choices[0]?.delta.content ?? "");
      })(),
      (e: unknown) => e instanceof client.StreamProtocolError && e.code === "incomplete_stream" && /ended before data: \[DONE\]/.test(e.message),
    );
    assert.deepEqual(parts, ["a", "b"]);
  });

  it("a connection that breaks mid-stream throws LatticeConnectionError", async () => {
    let pulls = 0;
    const breaks = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulls++ === 0) controller.enqueue(new TextEncoder().encode(`data: ${chunk("a")}\n\n`));
        else controller.error(new TypeError("terminated"));
      },
    });
    const { fetch } = fakeFetch(() => new Response(breaks, { status: 200 }));
    const parts: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const part of await compute(fetch).streamChatForPersonalRuntime("lat_1", { messages: [] })) parts.push(part.choices[0]?.delta.content ?? "");
      })(),
      (e: unknown) => e instanceof client.LatticeConnectionError && !(e instanceof client.LatticeTimeoutError) && /broke off/.test(e.message),
    );
    assert.deepEqual(parts, ["a"]);
  });

  it("the deadline mid-stream is LatticeTimeoutError; the caller's abort stays an AbortError", async () => {
    // A body that sends one chunk, then nothing until its request is aborted (as fetch
    // does); the timer keeps node alive like a real socket would.
    const stalls = (async (_input: string | URL | Request, init?: RequestInit) => {
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode(`data: ${chunk("a")}\n\n`));
          const alive = setTimeout(() => controller.error(new Error("never aborted")), 5000);
          init?.signal?.addEventListener("abort", () => {
            clearTimeout(alive);
            controller.error(init.signal?.reason);
          });
        },
      });
      return new Response(body, { status: 200 });
    }) as typeof fetch;
    const drain = async (stream: AsyncIterable<unknown>): Promise<void> => {
      for await (const _part of stream) {
        /* read until it fails */
      }
    };
    const quick = new ComputeClient({ credential: { kind: "apiKey", apiKey: "k" }, baseUrl: BASE, fetch: stalls, timeoutMs: 50 });
    await assert.rejects(
      drain(await quick.streamChatForPersonalRuntime("lat_1", { messages: [] })),
      (e: unknown) => e instanceof client.LatticeTimeoutError && /sent nothing within 50 ms/.test(e.message),
    );
    const controller = new AbortController();
    const stream = await compute(stalls).streamChatForPersonalRuntime("lat_1", { messages: [] }, { signal: controller.signal });
    const pending = drain(stream);
    controller.abort();
    await assert.rejects(pending, (e: unknown) => e instanceof Error && e.name === "AbortError");
  });

  it("a stream that keeps producing outlives timeoutMs: the deadline is on silence", async () => {
    // Ten chunks 25 ms apart (250 ms in all) under a 100 ms timeoutMs; like a real fetch,
    // the body fails with the signal's reason when the request is aborted.
    const drips = (async (_input: string | URL | Request, init?: RequestInit) => {
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          await new Promise((resolve) => setTimeout(resolve, 25));
          if (init?.signal?.aborted) controller.error(init.signal.reason);
          else if (sent++ < 10) controller.enqueue(new TextEncoder().encode(`data: ${chunk(String(sent))}\n\n`));
          else {
            controller.enqueue(new TextEncoder().encode("data: [DONE]\n\n"));
            controller.close();
          }
        },
      });
      return new Response(body, { status: 200 });
    }) as typeof fetch;
    const patient = new ComputeClient({ credential: { kind: "apiKey", apiKey: "k" }, baseUrl: BASE, fetch: drips, timeoutMs: 100 });
    const started = Date.now();
    const parts: string[] = [];
    for await (const part of await patient.streamChatForPersonalRuntime("lat_1", { messages: [] })) parts.push(part.choices[0]?.delta.content ?? "");
    assert.deepEqual(parts, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    assert.ok(Date.now() - started > 200, "the stream ran longer than timeoutMs");
  });

  it("rejects before streaming on an error status", async () => {
    const { fetch } = fakeFetch(json(404, envelope("runtime_not_found")));
    await assert.rejects(compute(fetch).streamChatForPersonalRuntime("lat_x", { messages: [] }), client.RuntimeNotFoundError);
  });
});

describe("retries", () => {
  const unreachable = (headers: Record<string, string> = { "x-should-retry": "true" }): Response => json(503, envelope("runtime_unreachable"), headers);

  it("retries runtime_unreachable honouring Retry-After", async () => {
    const { fetch, sent } = fakeFetch(unreachable({ "retry-after": "1.5" }), json(200, COMPLETION));
    const c = compute(fetch);
    const slept: number[] = [];
    (c as unknown as { transport: { sleep: (s: number) => Promise<void> } }).transport.sleep = async (s) => {
      slept.push(s);
    };
    assert.equal((await c.chatCompleteForPersonalRuntime("lat_1", { messages: [] })).id, "c1");
    assert.equal(sent.length, 2);
    assert.deepEqual(slept, [1.5]);
  });

  it("retries a replica shutting down, not a chat it cut off", async () => {
    const unavailable = (retry: string): Response => json(503, envelope("service_unavailable"), { "x-should-retry": retry });
    const retried = fakeFetch(unavailable("true"), json(200, COMPLETION));
    const c = compute(retried.fetch);
    (c as unknown as { transport: { sleep: (s: number) => Promise<void> } }).transport.sleep = async () => {};
    assert.equal((await c.chatCompleteForPersonalRuntime("lat_1", { messages: [] })).id, "c1");
    assert.equal(retried.sent.length, 2);
    const cutOff = fakeFetch(unavailable("false"), json(200, COMPLETION));
    await assert.rejects(compute(cutOff.fetch).chatCompleteForPersonalRuntime("lat_1", { messages: [] }), client.LatticeApiError);
    assert.equal(cutOff.sent.length, 1);
  });

  it("gives up after two retries", async () => {
    const { fetch, sent } = fakeFetch(json(429, envelope("rate_limited"), { "retry-after": "0" }));
    await assert.rejects(compute(fetch).listPersonalRuntimes(), client.RateLimitedError);
    assert.equal(sent.length, 3);
  });

  for (const [label, response] of [
    ["x-should-retry: false", () => unreachable({ "x-should-retry": "false" })],
    ["Retry-After too long", () => unreachable({ "retry-after": "120" })],
    ["provider_error", () => json(502, envelope("provider_error"))],
    ["runtime_timeout", () => json(504, envelope("runtime_timeout"))],
  ] as Array<[string, () => Response]>) {
    it(`does not retry: ${label}`, async () => {
      const { fetch, sent } = fakeFetch(response(), json(200, COMPLETION));
      await assert.rejects(compute(fetch).chatCompleteForPersonalRuntime("lat_1", { messages: [] }), LatticeApiError);
      assert.equal(sent.length, 1);
    });
  }

  it("retries a refused connection, even for a chat", async () => {
    const refused = new TypeError("fetch failed", { cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }) });
    const { fetch, sent } = fakeFetch(refused, json(200, COMPLETION));
    assert.equal((await compute(fetch).chatCompleteForPersonalRuntime("lat_1", { messages: [] })).id, "c1");
    assert.equal(sent.length, 2);
  });

  it("never resends a chat whose connection dropped after sending", async () => {
    const reset = new TypeError("fetch failed", { cause: Object.assign(new Error("socket"), { code: "UND_ERR_SOCKET" }) });
    const { fetch, sent } = fakeFetch(reset, json(200, COMPLETION));
    await assert.rejects(compute(fetch).chatCompleteForPersonalRuntime("lat_1", { messages: [] }), client.LatticeConnectionError);
    assert.equal(sent.length, 1);
  });

  it("a deadline becomes LatticeTimeoutError; the caller's abort stays an AbortError", async () => {
    // A fetch that never answers. AbortSignal.timeout's timer does not keep node alive
    // (a real fetch's socket does), so this one holds a timer until it is aborted.
    const hang = (async (_input: string | URL | Request, init?: RequestInit) =>
      new Promise<Response>((_resolve, reject) => {
        const alive = setTimeout(() => reject(new Error("never aborted")), 5000);
        init?.signal?.addEventListener("abort", () => {
          clearTimeout(alive);
          reject(init.signal?.reason);
        });
      })) as typeof fetch;
    const quick = new ComputeClient({ credential: { kind: "apiKey", apiKey: "k" }, baseUrl: BASE, fetch: hang, timeoutMs: 20 });
    await assert.rejects(quick.listPersonalRuntimes(), client.LatticeTimeoutError);
    const controller = new AbortController();
    const pending = compute(hang).listPersonalRuntimes({ signal: controller.signal });
    controller.abort();
    await assert.rejects(pending, (e: unknown) => e instanceof Error && e.name === "AbortError");
  });

  it("a real refused port surfaces as LatticeConnectionError without the key", async () => {
    const c = new ComputeClient({ credential: { kind: "apiKey", apiKey: "sk_secret" }, baseUrl: "http://127.0.0.1:9", maxRetries: 0 });
    await assert.rejects(c.listPersonalRuntimes(), (e: unknown) => e instanceof client.LatticeConnectionError && !e.message.includes("sk_secret"));
  });
});
