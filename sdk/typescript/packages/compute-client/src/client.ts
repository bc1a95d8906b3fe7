/** `ComputeClient`: list an account's personal runtimes and run chats on them. */

import { LatticeApiError, LatticeConfigurationError } from "./errors.js";
import { chunksFromLines, lines } from "./sse.js";
import { SilenceDeadline, Transport, type TransportOptions } from "./http.js";
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatOptions,
  ChatRequest,
  Credential,
  ModelObject,
  PersonalRuntime,
} from "./types.js";

export const MODEL_PREFIX = "lattice:personal:";

export interface ComputeClientOptions extends TransportOptions {
  /** Defaults to `{ kind: "apiKey", apiKey: process.env.LOVELACE_API_KEY }`. */
  credential?: Credential;
  /** Defaults to `process.env.LATTICE_GATEWAY_URL`. */
  baseUrl?: string;
}

/** A runtime record, its latticeId, or `undefined` (e.g. `runtimes[0]` of an empty list). */
export type RuntimeRef = PersonalRuntime | string | undefined;

export function latticeIdOf(runtime: RuntimeRef): string {
  const id = typeof runtime === "string" ? runtime : runtime?.latticeId;
  if (typeof id !== "string" || !id || id.includes("/")) {
    throw new LatticeConfigurationError(
      runtime === undefined
        ? "no personal runtime given (did listReachablePersonalRuntimes() return an empty list?)"
        : "runtime must be a PersonalRuntime or a latticeId without '/'",
    );
  }
  return id;
}

/** `lattice:personal:<latticeId>[/<localModel>]` */
export function modelString(runtime: RuntimeRef, localModel?: string): string {
  const base = MODEL_PREFIX + latticeIdOf(runtime);
  return localModel ? `${base}/${localModel}` : base;
}

function chatBody(runtime: RuntimeRef, request: ChatRequest, options: ChatOptions, stream: boolean): Record<string, unknown> {
  if (typeof request !== "object" || request === null || !Array.isArray(request.messages)) {
    throw new LatticeConfigurationError("the chat request must be an object with a messages array");
  }
  return { ...request, model: modelString(runtime, options.localModel), stream };
}

function expectArray<T>(payload: unknown, field: string): T[] {
  const value = typeof payload === "object" && payload !== null ? (payload as Record<string, unknown>)[field] : undefined;
  if (!Array.isArray(value)) {
    throw new LatticeApiError(`the gateway's answer is missing '${field}'`, { status: 200 });
  }
  return value as T[];
}

/** Chunks of a streaming chat. Iterate with `for await`; `close()` or `break` ends the request. */
export class ChatStream implements AsyncIterable<ChatCompletionChunk> {
  private readonly controller: AbortController;
  private readonly response: Response;
  private readonly transport: Transport;
  private readonly deadline: SilenceDeadline;
  private readonly callerSignal: AbortSignal | undefined;
  private consumed = false;

  constructor(response: Response, controller: AbortController, transport: Transport, deadline: SilenceDeadline, callerSignal?: AbortSignal) {
    this.response = response;
    this.controller = controller;
    this.transport = transport;
    this.deadline = deadline;
    this.callerSignal = callerSignal;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ChatCompletionChunk> {
    if (this.consumed) throw new LatticeConfigurationError("a ChatStream can be iterated only once");
    this.consumed = true;
    const body = this.response.body;
    if (!body) return;
    try {
      yield* chunksFromLines<ChatCompletionChunk>(lines(this.rearming(body as unknown as AsyncIterable<Uint8Array>)));
    } catch (error) {
      // After close() the abort is ours; otherwise the deadline or the network broke it.
      if (this.controller.signal.aborted) throw error;
      throw this.transport.streamFailure(error, this.deadline, this.callerSignal);
    } finally {
      this.close();
    }
  }

  /** Stop reading; the gateway sees the disconnect and cancels the job on the daemon. */
  close(): void {
    this.deadline.clear();
    if (!this.controller.signal.aborted) this.controller.abort();
  }

  /** The body, re-arming the silence deadline whenever bytes (chunks, keep-alives) arrive. */
  private async *rearming(body: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    for await (const bytes of body) {
      this.deadline.arm();
      yield bytes;
    }
  }
}

export class ComputeClient {
  protected readonly transport: Transport;

  constructor(options: ComputeClientOptions = {}) {
    this.transport = new Transport(options);
  }

  get baseUrl(): string {
    return this.transport.baseUrl;
  }

  /** Every runtime of the account, with its live status. */
  async listPersonalRuntimes(options: { signal?: AbortSignal } = {}): Promise<PersonalRuntime[]> {
    const payload = await this.transport.json<unknown>("GET", "/v1/personal-runtimes", undefined, options.signal);
    return expectArray<PersonalRuntime>(payload, "runtimes");
  }

  /** The runtimes whose daemon is connected right now. */
  async listReachablePersonalRuntimes(options: { signal?: AbortSignal } = {}): Promise<PersonalRuntime[]> {
    return (await this.listPersonalRuntimes(options)).filter((runtime) => runtime.status === "reachable");
  }

  async chatCompleteForPersonalRuntime(
    runtime: RuntimeRef,
    request: ChatRequest,
    options: ChatOptions = {},
  ): Promise<ChatCompletion> {
    const body = chatBody(runtime, request, options, false);
    return this.transport.json<ChatCompletion>("POST", "/v1/chat/completions", body, options.signal);
  }

  /** Errors before the stream starts reject here; errors inside it throw while iterating. */
  async streamChatForPersonalRuntime(
    runtime: RuntimeRef,
    request: ChatRequest,
    options: ChatOptions = {},
  ): Promise<ChatStream> {
    const body = chatBody(runtime, request, options, true);
    const controller = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    const deadline = new SilenceDeadline(this.transport.timeoutMs);
    let response: Response;
    try {
      response = await this.transport.send("POST", "/v1/chat/completions", body, signal, deadline);
    } catch (error) {
      deadline.clear();
      throw error;
    }
    return new ChatStream(response, controller, this.transport, deadline, options.signal);
  }

  /** OpenAI model objects for the caller's reachable runtimes. */
  async models(options: { signal?: AbortSignal } = {}): Promise<ModelObject[]> {
    const payload = await this.transport.json<unknown>("GET", "/v1/models", undefined, options.signal);
    return expectArray<ModelObject>(payload, "data");
  }
}
