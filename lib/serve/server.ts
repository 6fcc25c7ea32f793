/**
 * startServer: a node:http server around createHandler, listening once the model is loaded, with
 * a graceful close (stop accepting, let generations finish within a grace period, then abort them).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadModel, type LoadOptions } from '../load.js';
import { Model } from '../model.js';
import { createHandler, type HandlerOptions, type MicroGPTHandler } from './handler.js';

export interface ServerOptions extends HandlerOptions {
  /** A loaded Model, or what loadModel takes (a path, 'default'); default 'default'. */
  readonly model?: Model | string;
  /** Options for loadModel when `model` is a path. */
  readonly load?: LoadOptions;
  /** Default 127.0.0.1: only this machine can connect. */
  readonly host?: string;
  /** Default 8080; 0 picks a free port (see `url`). */
  readonly port?: number;
  /** Milliseconds close() lets running generations finish before aborting them (default 10 000). */
  readonly gracePeriodMs?: number;
}

export interface RunningServer {
  readonly server: Server;
  readonly handler: MicroGPTHandler;
  readonly model: Model;
  /** http://host:port/ as bound. */
  readonly url: string;
  /**
   * Stops accepting connections, lets generations in flight finish (up to the grace period),
   * aborts the rest, and resolves when the server is closed. A model the server loaded is disposed.
   */
  close(): Promise<void>;
}

export const SERVER_DEFAULTS = { host: '127.0.0.1', port: 8080, gracePeriodMs: 10_000 } as const;

export async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  const owned = !(options.model instanceof Model);
  const model = options.model instanceof Model ? options.model : await loadModel(options.model ?? 'default', options.load);
  const handler = createHandler(model, options);
  const server = createServer(handler);
  const host = options.host ?? SERVER_DEFAULTS.host;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? SERVER_DEFAULTS.port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    if (owned) model.dispose();
    throw error;
  }
  const address = server.address() as AddressInfo;
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const grace = options.gracePeriodMs ?? SERVER_DEFAULTS.gracePeriodMs;
  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, grace);
      });
      await Promise.race([handler.drain(), expired]);
      clearTimeout(timer);
      handler.abortAll();
      // Aborted streams end at their next token; give them that turn, then cut what is left.
      await new Promise<void>((resolve) => setTimeout(resolve, 50));
      server.closeAllConnections();
      await closed;
      if (owned) model.dispose();
    })();
    return closing;
  };
  return { server, handler, model, url: `http://${shownHost}:${address.port}/`, close };
}
