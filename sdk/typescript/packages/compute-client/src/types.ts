/** Credentials, runtime records and the OpenAI-shaped chat payloads. */

export type Credential =
  | { kind: "apiKey"; apiKey: string }
  | { kind: "oauth"; accessToken: string };

export type ExecutionBackend = "local-model" | "assistant-runtime";
export type RuntimeStatus = "unpaired" | "reachable" | "offline" | "revoked";

export interface PersonalRuntime {
  latticeId: string;
  accountId: string;
  displayName: string;
  executionBackend: ExecutionBackend | (string & {});
  status: RuntimeStatus | (string & {});
  createdAt: string;
  updatedAt: string;
  /** Optional fields the gateway may add (lastSeenAt, daemonVersion, models, ...). */
  [extra: string]: unknown;
}

export interface BootstrapToken {
  latticeId: string;
  /** One-time secret (`plrt_v1...`): hand it to the user, never log it. */
  bootstrapToken: string;
  expiresAt: string;
  /** `lattice-ctl relay connect --gateway '<url>' --bootstrap-token '<token>'` */
  command: string;
}

export type ChatRole = "system" | "user" | "assistant" | "tool" | "developer";

export interface ChatMessage {
  role: ChatRole;
  content: string | null | Array<Record<string, unknown>>;
  name?: string;
  tool_calls?: unknown[];
  tool_call_id?: string;
}

/** An OpenAI chat request without `model` and `stream`: the SDK sets both. */
export interface ChatRequest {
  messages: ChatMessage[];
  temperature?: number;
  top_p?: number;
  max_tokens?: number;
  max_completion_tokens?: number;
  stop?: string | string[];
  seed?: number;
  tools?: unknown[];
  tool_choice?: unknown;
  response_format?: unknown;
  [extra: string]: unknown;
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: Array<{
    index: number;
    message: { role: "assistant"; content: string | null; tool_calls?: unknown[] };
    finish_reason: string | null;
  }>;
  /** What the local provider reported; null when it reported none. */
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
  [extra: string]: unknown;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: Array<{
    index: number;
    delta: { role?: "assistant"; content?: string | null; tool_calls?: unknown[] };
    finish_reason: string | null;
  }>;
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
  [extra: string]: unknown;
}

export interface ModelObject {
  id: string;
  object: "model";
  created?: number;
  owned_by?: string;
  [extra: string]: unknown;
}

/** Per-call options for chats. */
export interface ChatOptions {
  /** A specific local model on the runtime (`lattice:personal:<id>/<localModel>`). */
  localModel?: string;
  /** Abort the request (and, for streams, the daemon's provider call). */
  signal?: AbortSignal;
}
