/** Typed errors for the gateway's envelope `{"error": {message, type, param, code}}`. */

export class LatticeError extends Error {
  override name = "LatticeError";
}

/** The client cannot be built: no gateway URL or no credential. */
export class LatticeConfigurationError extends LatticeError {
  override name = "LatticeConfigurationError";
}

/** The gateway could not be reached (after any safe retries). */
export class LatticeConnectionError extends LatticeError {
  override name = "LatticeConnectionError";
}

/** The gateway did not answer within `timeoutMs`. */
export class LatticeTimeoutError extends LatticeConnectionError {
  override name = "LatticeTimeoutError";
}

export interface LatticeApiErrorInit {
  code?: string | null;
  status?: number;
  param?: string | null;
  type?: string | null;
  retryAfter?: number | null;
  body?: unknown;
}

/** The gateway answered with an error envelope (or sent an error event mid-stream). */
export class LatticeApiError extends LatticeError {
  override name = "LatticeApiError";
  static defaultStatus = 500;
  readonly code: string | null;
  readonly status: number;
  readonly param: string | null;
  readonly type: string | null;
  readonly body: unknown;

  constructor(message: string, init: LatticeApiErrorInit = {}) {
    super(message);
    this.code = init.code ?? null;
    this.status = init.status ?? (this.constructor as typeof LatticeApiError).defaultStatus;
    this.param = init.param ?? null;
    this.type = init.type ?? null;
    this.body = init.body;
  }
}

export class InvalidApiKeyError extends LatticeApiError {
  override name = "InvalidApiKeyError";
  static override defaultStatus = 401;
}
export class InsufficientScopesError extends LatticeApiError {
  override name = "InsufficientScopesError";
  static override defaultStatus = 403;
}
export class RuntimeNotFoundError extends LatticeApiError {
  override name = "RuntimeNotFoundError";
  static override defaultStatus = 404;
}
export class RuntimeRevokedError extends LatticeApiError {
  override name = "RuntimeRevokedError";
  static override defaultStatus = 403;
}
export class RuntimeUnreachableError extends LatticeApiError {
  override name = "RuntimeUnreachableError";
  static override defaultStatus = 503;
}
export class InvalidRequestError extends LatticeApiError {
  override name = "InvalidRequestError";
  static override defaultStatus = 400;
}
export class RequestTooLargeError extends LatticeApiError {
  override name = "RequestTooLargeError";
  static override defaultStatus = 413;
}
export class ProviderError extends LatticeApiError {
  override name = "ProviderError";
  static override defaultStatus = 502;
}
export class RuntimeTimeoutError extends LatticeApiError {
  override name = "RuntimeTimeoutError";
  static override defaultStatus = 504;
}
export class BootstrapTokenExpiredError extends LatticeApiError {
  override name = "BootstrapTokenExpiredError";
  static override defaultStatus = 401;
}
export class BootstrapTokenUsedError extends LatticeApiError {
  override name = "BootstrapTokenUsedError";
  static override defaultStatus = 409;
}
export class InvalidBootstrapTokenError extends LatticeApiError {
  override name = "InvalidBootstrapTokenError";
  static override defaultStatus = 401;
}
export class RateLimitedError extends LatticeApiError {
  override name = "RateLimitedError";
  static override defaultStatus = 429;
  /** Seconds from `Retry-After`, when the gateway sent it. */
  readonly retryAfter: number | null;
  constructor(message: string, init: LatticeApiErrorInit = {}) {
    super(message, init);
    this.retryAfter = init.retryAfter ?? null;
  }
}
/** The stream carried something that is not an OpenAI chunk. */
export class StreamProtocolError extends LatticeApiError {
  override name = "StreamProtocolError";
  static override defaultStatus = 200;
}

type ApiErrorClass = new (message: string, init?: LatticeApiErrorInit) => LatticeApiError;

export const ERROR_CLASSES: Readonly<Record<string, ApiErrorClass>> = {
  invalid_api_key: InvalidApiKeyError,
  insufficient_scopes: InsufficientScopesError,
  runtime_not_found: RuntimeNotFoundError,
  runtime_revoked: RuntimeRevokedError,
  runtime_unreachable: RuntimeUnreachableError,
  invalid_request: InvalidRequestError,
  request_too_large: RequestTooLargeError,
  provider_error: ProviderError,
  runtime_timeout: RuntimeTimeoutError,
  bootstrap_token_expired: BootstrapTokenExpiredError,
  bootstrap_token_used: BootstrapTokenUsedError,
  invalid_bootstrap_token: InvalidBootstrapTokenError,
  rate_limited: RateLimitedError,
};

export function parseRetryAfter(value: string | null | undefined): number | null {
  if (value == null) return null;
  const seconds = Number(value.trim());
  return Number.isFinite(seconds) && seconds >= 0 && value.trim() !== "" ? seconds : null;
}

function stringOrNull(value: unknown): string | null {
  return typeof value === "string" ? value : null;
}

/** The typed error for an envelope; bodies that are not one keep the base class. */
export function errorFromBody(
  body: unknown,
  status: number | undefined,
  retryAfter: number | null = null,
): LatticeApiError {
  const envelope =
    typeof body === "object" && body !== null ? (body as Record<string, unknown>)["error"] : undefined;
  if (typeof envelope !== "object" || envelope === null) {
    const text = typeof body === "string" && body ? body.slice(0, 500) : `HTTP ${status ?? "error"}`;
    return new LatticeApiError(text, { ...(status !== undefined && { status }), body });
  }
  const fields = envelope as Record<string, unknown>;
  const code = stringOrNull(fields["code"]);
  const message = stringOrNull(fields["message"]) || code || `HTTP ${status ?? "error"}`;
  const Cls = (code !== null && ERROR_CLASSES[code]) || LatticeApiError;
  return new Cls(message, {
    code,
    ...(status !== undefined && { status }),
    param: stringOrNull(fields["param"]),
    type: stringOrNull(fields["type"]),
    retryAfter,
    body,
  });
}
