/**
 * Server-Sent Events as OpenAI streams them: `data: <json>\n\n` per chunk, `data: [DONE]` last.
 * Writes wait for the socket to drain, so a slow reader holds its own generation back rather
 * than filling the server's memory; nothing is written once the response has ended or closed.
 */
import type { ServerResponse } from 'node:http';

export function startEventStream(res: ServerResponse): void {
  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-cache',
    'X-Accel-Buffering': 'no', // nginx: pass each event on at once
  });
  res.flushHeaders();
}

/**
 * Sends one event (`json`: serialized already, or a value to serialize); resolves when the socket
 * can take more (or the response is gone).
 */
export async function sendEvent(res: ServerResponse, json: string | object): Promise<void> {
  if (res.writableEnded || res.destroyed) return;
  const ok = res.write(`data: ${typeof json === 'string' ? json : JSON.stringify(json)}\n\n`);
  if (ok) return;
  await new Promise<void>((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

export function endEventStream(res: ServerResponse): void {
  if (res.writableEnded || res.destroyed) return;
  res.end('data: [DONE]\n\n');
}
