/**
 * How tests start node processes. Under tap, every spawn is rewritten to preload tap's
 * process-info hook (NODE_OPTIONS=--import=@tapjs/processinfo), which only coverage uses (off
 * here) and which costs each child about a second of start-up on a loaded 2-core host, for
 * source maps of every module it loads. `env -u NODE_OPTIONS` clears it before node starts and
 * then execs node, so the pid (kill -9, SIGSTOP) is still the child's own. Not a *.test.ts file.
 */
export const ENV = '/usr/bin/env'

/** The command and arguments that run `node <args>` without tap's preload. */
export function node (args: string[]): [string, string[]] {
  return [ENV, ['-u', 'NODE_OPTIONS', process.execPath, ...args]]
}
