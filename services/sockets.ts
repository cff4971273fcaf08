import type { Socket } from 'node:net'

/**
 * Drops a client's socket with a TCP reset rather than a close: the kernel then frees at once
 * what it still holds for the client (megabytes for a reader that stopped), where a closed
 * socket keeps it until the client reads it or the kernel gives up, minutes later.
 */
export function dropSocket (socket: Socket | null | undefined): void {
  if (socket === null || socket === undefined || socket.destroyed) return
  // Not a TCP socket of Node's (a light-my-request one); or one whose end was handed to the
  // kernel, which libuv cannot reset (its handle would then stay open): destroyed as before.
  if (typeof socket.resetAndDestroy !== 'function' || socket.writableEnded) {
    socket.destroy()
    return
  }
  try {
    socket.resetAndDestroy()
  } catch {
    // A pipe's handle cannot reset.
    socket.destroy()
  }
}
