/**
 * The command-line tool run as operators run it: `node dist/cli/taskvault.js ...` in a child
 * process with only PATH in its environment. Not a *.test.ts file: tap does not run it.
 */
import { spawn } from 'node:child_process'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { within } from './server-process.js'
import { node } from './node-child.js'

export const CLI = fileURLToPath(new URL('../cli/taskvault.js', import.meta.url))
const RUN_TIMEOUT_MS = 60_000

export interface Run {
  code: number | null
  stdout: string
  stderr: string
  /** stdout parsed as JSON (for --json runs). */
  json: () => any
}

/**
 * `unprivileged`: root runs it without the capabilities that let it read any file (a non-root user runs it as is).
 * `pid1`: as pid 1 of a new pid namespace, as in a container (root only: `unshare`).
 * `strace`: run under `strace` with these options (to see, or fail, its system calls).
 */
export async function taskvault (args: string[], options: { cwd?: string, env?: Record<string, string>, unprivileged?: boolean, pid1?: boolean, strace?: string[], nodeArgs?: string[] } = {}): Promise<Run> {
  const [file, argv] = node([...(options.nodeArgs ?? []), CLI, ...args])
  let command = options.unprivileged === true && process.getuid?.() === 0 ? ['setpriv', '--bounding-set=-dac_override,-dac_read_search', '--', file, ...argv] : [file, ...argv]
  if (options.pid1 === true) command = ['unshare', '--pid', '--fork', '--mount-proc', '--', ...command]
  if (options.strace !== undefined) command = ['strace', '-f', '-qq', ...options.strace, '--', ...command]
  const child = spawn(command[0] as string, command.slice(1), {
    cwd: options.cwd ?? process.cwd(),
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  // Closed: its exit code, null when a signal ended it.
  const closed = await within(new Promise<{ code: number | null }>((resolve) => child.once('close', (code) => resolve({ code }))), RUN_TIMEOUT_MS)
  if (closed === null) {
    child.kill('SIGKILL')
    throw new Error(`taskvault ${args.join(' ')} did not finish within ${RUN_TIMEOUT_MS} ms\n${stderr}`)
  }
  return { code: closed.code, stdout, stderr, json: () => JSON.parse(stdout) }
}

/** Every file under `dir` (relative path -> bytes), without following links. */
export async function snapshot (dir: string, files = new Map<string, Buffer>(), prefix = ''): Promise<Map<string, Buffer>> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) await snapshot(join(dir, entry.name), files, `${prefix}${entry.name}/`)
    else if (entry.isFile()) files.set(prefix + entry.name, await readFile(join(dir, entry.name)))
  }
  return files
}
