/**
 * Server-sent events of an OpenAI chat stream, parsed into chunk objects.
 * `:` comment lines (keep-alives) are ignored, `data: [DONE]` ends the stream, and an
 * event whose JSON carries `error` throws the typed error for its code. A body that ends
 * without `[DONE]` was cut short (a proxy or load balancer closed it): that throws too,
 * rather than passing a partial answer off as a whole one.
 */

import { StreamProtocolError, errorFromBody } from "./errors.js";

export class SSEDecoder {
  private data: string[] = [];

  /** Feed one line (without its newline); returns an event's data when one completes. */
  feed(rawLine: string): string | null {
    const line = rawLine.endsWith("\r") ? rawLine.slice(0, -1) : rawLine;
    if (line === "") {
      if (this.data.length === 0) return null;
      const data = this.data.join("\n");
      this.data = [];
      return data;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this.data.push(value);
    return null;
  }

  flush(): string | null {
    return this.feed("");
  }
}

/** The chunk for one event's data; `null` for `[DONE]`; throws on an error event. */
export function decodeEvent<T>(data: string): T | null {
  if (data.trim() === "[DONE]") return null;
  let payload: unknown;
  try {
    payload = JSON.parse(data);
  } catch {
    throw new StreamProtocolError(`the stream sent an event that is not JSON: ${data.slice(0, 120)}`, {
      code: "invalid_stream",
    });
  }
  if (typeof payload !== "object" || payload === null || Array.isArray(payload)) {
    throw new StreamProtocolError("the stream sent an event that is not a JSON object", {
      code: "invalid_stream",
    });
  }
  if ("error" in payload) throw errorFromBody(payload, undefined);
  return payload as T;
}

/** Split a byte stream into lines (LF, CRLF or CR... CR-only streams are not produced by us). */
export async function* lines(body: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const bytes of body) {
    buffer += decoder.decode(bytes, { stream: true });
    let newline: number;
    while ((newline = buffer.indexOf("\n")) !== -1) {
      yield buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer) yield buffer;
}

export async function* chunksFromLines<T>(source: AsyncIterable<string>): AsyncGenerator<T> {
  const decoder = new SSEDecoder();
  for await (const line of source) {
    const data = decoder.feed(line);
    if (data === null) continue;
    const chunk = decodeEvent<T>(data);
    if (chunk === null) return;
    yield chunk;
  }
  const last = decoder.flush();
  if (last !== null) {
    const chunk = decodeEvent<T>(last);
    if (chunk === null) return;
    yield chunk;
  }
  throw new StreamProtocolError("the stream ended before data: [DONE]; the answer may be incomplete", {
    code: "incomplete_stream",
  });
}
