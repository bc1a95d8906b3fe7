/** `createLatticeCloudClient`: manage personal runtimes and mint bootstrap tokens. */

import { LatticeApiError, LatticeConfigurationError, type BootstrapToken, type Credential, type ExecutionBackend, type PersonalRuntime } from "@lovelace-ai/compute-client";
import { Transport, latticeIdOf, type TransportOptions } from "@lovelace-ai/compute-client/internal";

export * from "@lovelace-ai/compute-client";

export interface LatticeCloudClientOptions extends Omit<TransportOptions, "credential"> {
  /** Defaults to `process.env.LATTICE_GATEWAY_URL`. */
  baseUrl?: string;
  /** An API key (`sk_...`); defaults to `process.env.LOVELACE_API_KEY`. */
  apiKey?: string;
  /** Instead of `apiKey`: `{ kind: "oauth", accessToken }` or `{ kind: "apiKey", apiKey }`. */
  credential?: Credential;
}

export interface CreatePersonalRuntimeInput {
  displayName: string;
  executionBackend: ExecutionBackend;
}

export interface CreateBootstrapTokenInput {
  /** 60..3600, default 600 (the gateway's bounds). */
  ttlSeconds?: number;
}

type RuntimeArg = PersonalRuntime | string;

function runtimePath(runtime: RuntimeArg): string {
  return `/v1/personal-runtimes/${encodeURIComponent(latticeIdOf(runtime))}`;
}

function field<T>(payload: unknown, name: string): T {
  const value = typeof payload === "object" && payload !== null ? (payload as Record<string, unknown>)[name] : undefined;
  if (value === undefined) throw new LatticeApiError(`the gateway's answer is missing '${name}'`, { status: 200 });
  return value as T;
}

export class PersonalRuntimes {
  constructor(private readonly transport: Transport) {}

  async create(input: CreatePersonalRuntimeInput): Promise<PersonalRuntime> {
    const body = { displayName: input.displayName, executionBackend: input.executionBackend };
    return field(await this.transport.json("POST", "/v1/personal-runtimes", body), "runtime");
  }

  async list(): Promise<PersonalRuntime[]> {
    return field(await this.transport.json("GET", "/v1/personal-runtimes"), "runtimes");
  }

  async get(runtime: RuntimeArg): Promise<PersonalRuntime> {
    return field(await this.transport.json("GET", runtimePath(runtime)), "runtime");
  }

  /** Final: the daemon's credential stops working and in-flight jobs fail with runtime_revoked. */
  async revoke(runtime: RuntimeArg): Promise<PersonalRuntime> {
    return field(await this.transport.json("DELETE", runtimePath(runtime)), "runtime");
  }

  async createBootstrapToken(runtime: RuntimeArg, input: CreateBootstrapTokenInput = {}): Promise<BootstrapToken> {
    const body = input.ttlSeconds === undefined ? {} : { ttlSeconds: input.ttlSeconds };
    const token = await this.transport.json<BootstrapToken>("POST", `${runtimePath(runtime)}/bootstrap-tokens`, body);
    field<string>(token, "bootstrapToken");
    return token;
  }
}

export class LatticeCloudClient {
  readonly personalRuntimes: PersonalRuntimes;
  private readonly transport: Transport;

  constructor(options: LatticeCloudClientOptions = {}) {
    const { apiKey, credential, ...rest } = options;
    if (apiKey !== undefined && credential !== undefined) {
      throw new LatticeConfigurationError("pass either apiKey or credential, not both");
    }
    this.transport = new Transport({
      ...rest,
      credential: credential ?? (apiKey !== undefined ? { kind: "apiKey", apiKey } : undefined),
    });
    this.personalRuntimes = new PersonalRuntimes(this.transport);
  }

  get baseUrl(): string {
    return this.transport.baseUrl;
  }
}

export function createLatticeCloudClient(options: LatticeCloudClientOptions = {}): LatticeCloudClient {
  return new LatticeCloudClient(options);
}
