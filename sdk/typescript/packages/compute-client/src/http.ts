/** One fetch-based transport per client: auth headers, error mapping and the retry policy. */

import {
  LatticeApiError,
  LatticeConfigurationError,
  LatticeConnectionError,
  LatticeError,
  LatticeTimeoutError,
  errorFromBody,
  parseRetryAfter,
} from "./errors.js";
import type { Credential } from "./types.js";

export const GATEWAY_URL_ENV = "LATTICE_GATEWAY_URL";
export const API_KEY_ENV = "LOVELACE_API_KEY";
const VERSION = "0.1.0";

export interface TransportOptions {
  baseUrl?: string | undefined;
  credential?: Credential | undefined;
  /** Retries of safe failures (see docs/sdk.md); default 2, 0 disables. */
  maxRetries?: number | undefined;
  /**
   * Milliseconds of silence allowed, default 600000: a whole request, or for a stream the
   * wait for its answer and then each gap between chunks (a stream that keeps producing
   * is never cut off).
   */
  timeoutMs?: number | undefined;
  /** A fetch implementation (tests, proxies); default the platform's. */
  fetch?: typeof fetch | undefined;
}

function env(name: string): string | undefined {
  const value = typeof process !== "undefined" ? process.env[name] : undefined;
  return value && value.trim() ? value.trim() : undefined;
}

export function resolveBaseUrl(baseUrl: string | undefined): string {
  const url = (baseUrl ?? env(GATEWAY_URL_ENV) ?? "").trim();
  if (!url) {
    throw new LatticeConfigurationError(`no gateway URL: pass baseUrl or set ${GATEWAY_URL_ENV}`);
  }
  if (!/^https?:\/\//.test(url)) {
    throw new LatticeConfigurationError(`the gateway URL must start with http:// or https:// (got ${JSON.stringify(url.slice(0, 80))})`);
  }
  return url.replace(/\/+$/, "");
}

export function resolveCredential(credential: Credential | undefined): Credential {
  const resolved: Credential | undefined =
    credential ?? (env(API_KEY_ENV) ? { kind: "apiKey", apiKey: env(API_KEY_ENV)! } : undefined);
  if (!resolved) {
    throw new LatticeConfigurationError(`no credential: pass credential or set ${API_KEY_ENV}`);
  }
  const secret =
    resolved.kind === "apiKey" ? resolved.apiKey : resolved.kind === "oauth" ? resolved.accessToken : undefined;
  if (typeof secret !== "string" || !secret || /[\s\x00-\x1f]/.test(secret)) {
    throw new LatticeConfigurationError(
      'credential must be { kind: "apiKey", apiKey } or { kind: "oauth", accessToken } with a non-empty secret',
    );
  }
  return resolved;
}

function authHeaders(credential: Credential): Record<string, string> {
  return credential.kind === "apiKey"
    ? { "x-api-key": credential.apiKey }
    : { authorization: `Bearer ${credential.accessToken}` };
}

/** status:code pairs a retry can fix; service_unavailable: a gateway replica shutting down or full. */
const RETRYABLE = new Set(["429:rate_limited", "503:runtime_unreachable", "503:service_unavailable"]);
/** undici's codes for a connection that was never established: no byte of the request left. */
const NOT_SENT_CODES = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT", "EHOSTUNREACH", "ENETUNREACH"]);
/** A connection lost before any answer: only reads (GET) are sent again after it. */
const LOST_CODES = new Set(["ECONNRESET", "UND_ERR_SOCKET", "UND_ERR_CLOSED", "EPIPE"]);
const MAX_DELAY_S = 8;
const BASE_DELAY_S = 0.5;

function backoffSeconds(attempt: number): number {
  const ceiling = Math.min(MAX_DELAY_S, BASE_DELAY_S * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

function causeCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 4 && typeof current === "object" && current !== null; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string") return code;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/**
 * A deadline on silence: it fires `ms` after it was (re)armed. The SDK arms it when a
 * request starts and again whenever a stream delivers bytes.
 */
export class SilenceDeadline {
  private readonly controller = new AbortController();
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly ms: number) {
    this.arm();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  arm(): void {
    clearTimeout(this.timer);
    if (this.controller.signal.aborted) return;
    this.timer = setTimeout(() => this.controller.abort(new DOMException(`nothing within ${this.ms} ms`, "TimeoutError")), this.ms);
    // Like AbortSignal.timeout, the deadline alone does not keep node running.
    (this.timer as { unref?: () => void }).unref?.();
  }

  clear(): void {
    clearTimeout(this.timer);
  }
}

export class Transport {
  readonly baseUrl: string;
  readonly maxRetries: number;
  private readonly headers: Record<string, string>;
  readonly timeoutMs: number;
  private readonly fetchImpl: typeof fetch;
  /** Replaced in tests so retries do not wait. */
  sleep: (seconds: number) => Promise<void> = (s) => new Promise((resolve) => setTimeout(resolve, s * 1000));

  constructor(options: TransportOptions = {}) {
    this.baseUrl = resolveBaseUrl(options.baseUrl);
    this.headers = {
      accept: "application/json",
      "user-agent": `lovelace-ai-compute-ts/${VERSION}`,
      ...authHeaders(resolveCredential(options.credential)),
    };
    this.maxRetries = Math.max(0, options.maxRetries ?? 2);
    this.timeoutMs = options.timeoutMs ?? 600_000;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  async json<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const deadline = new SilenceDeadline(this.timeoutMs);
    try {
      const response = await this.send(method, path, body, signal, deadline);
      try {
        return (await response.json()) as T;
      } catch {
        throw new LatticeApiError("the gateway answered with a body that is not JSON", { status: response.status });
      }
    } finally {
      deadline.clear();
    }
  }

  /**
   * A response with status 2xx; errors and safe retries are handled here. `deadline`
   * bounds the wait (all attempts) and, through the response's signal, its body; the
   * caller clears it when done.
   */
  async send(method: string, path: string, body: unknown, signal: AbortSignal | undefined, deadline: SilenceDeadline): Promise<Response> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers = payload === undefined ? this.headers : { ...this.headers, "content-type": "application/json" };
    const combined = signal ? AbortSignal.any([signal, deadline.signal]) : deadline.signal;
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        response = await this.fetchImpl(this.baseUrl + path, {
          method,
          headers,
          ...(payload !== undefined && { body: payload }),
          signal: combined,
        });
      } catch (error) {
        if (signal?.aborted) throw error; // the caller's own abort: theirs to handle
        if (deadline.signal.aborted) {
          throw new LatticeTimeoutError(`the gateway at ${this.baseUrl} did not answer within ${this.timeoutMs} ms`, { cause: error });
        }
        const code = causeCode(error);
        const retryable =
          attempt < this.maxRetries &&
          code !== undefined &&
          (NOT_SENT_CODES.has(code) || (method === "GET" && LOST_CODES.has(code)));
        if (!retryable) {
          throw new LatticeConnectionError(`could not reach the gateway at ${this.baseUrl}: ${code ?? String(error)}`, {
            cause: error,
          });
        }
        await this.sleep(backoffSeconds(attempt));
        continue;
      }
      if (response.ok) return response;
      const text = await response.text();
      let errorBody: unknown = text.slice(0, 500);
      try {
        errorBody = JSON.parse(text);
      } catch {
        /* not an envelope: keep the text */
      }
      const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
      const error = errorFromBody(errorBody, response.status, retryAfter);
      const delay = this.retryDelay(response, error, retryAfter, attempt);
      if (delay === null) throw error;
      await this.sleep(delay);
    }
  }

  /**
   * The error to throw when a streamed body fails after its 200: the caller's own abort
   * and the SDK's errors stay as they are; the deadline and network failures become
   * LatticeTimeoutError / LatticeConnectionError, as they would before the answer.
   */
  streamFailure(error: unknown, deadline: SilenceDeadline, callerSignal?: AbortSignal): unknown {
    if (callerSignal?.aborted || error instanceof LatticeError) return error;
    if (deadline.signal.aborted) {
      return new LatticeTimeoutError(`the stream from the gateway at ${this.baseUrl} sent nothing within ${this.timeoutMs} ms`, {
        cause: error,
      });
    }
    return new LatticeConnectionError(`the stream from the gateway at ${this.baseUrl} broke off: ${causeCode(error) ?? String(error)}`, {
      cause: error,
    });
  }

  private retryDelay(response: Response, error: LatticeApiError, retryAfter: number | null, attempt: number): number | null {
    if (attempt >= this.maxRetries) return null;
    if (!RETRYABLE.has(`${response.status}:${error.code}`)) return null;
    if ((response.headers.get("x-should-retry") ?? "").trim().toLowerCase() === "false") return null;
    if (retryAfter === null) return backoffSeconds(attempt);
    return retryAfter <= MAX_DELAY_S ? retryAfter : null;
  }
}
