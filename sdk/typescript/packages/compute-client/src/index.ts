export { ComputeClient, ChatStream, modelString, MODEL_PREFIX } from "./client.js";
export type { ComputeClientOptions, RuntimeRef } from "./client.js";
export * from "./errors.js";
export type * from "./types.js";
