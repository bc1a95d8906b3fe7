/** Shared with @lovelace-ai/compute; not part of the documented surface. */
export { Transport, resolveBaseUrl, resolveCredential, type TransportOptions } from "./http.js";
export { latticeIdOf } from "./client.js";
