import { spawn } from 'node:child_process'
import type { Readable } from 'node:stream'
import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { access, mkdir, readFile, readdir, rmdir } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from '../../types.js'
import { pidAlive } from '../../pid.js'

/**
 * A cgroup (v2) per command call. A process that calls setsid leaves its process group, but
 * never its cgroup: killing the cgroup (`cgroup.kill`) kills everything the command started.
 * Node cannot place a child in a cgroup before it runs, so a fixed /bin/sh script moves itself
 * in and then execs the program (the program's arguments are passed as "$@", never parsed).
 */

/** $0 of the wrapper script: how its own errors begin on stderr. */
export const WRAPPER_NAME = 'taskvault-command'
/** A per-call cgroup's name: `taskvault-<pid>-<id>`. */
const LEFTOVER = /^taskvault-(\d+)-[0-9a-f]{8}$/u
const WRAPPER = 'echo 0 > "$1/cgroup.procs" && shift && exec "$@"'
/** How often an emptying cgroup is looked at. */
const POLL_MS = 5
/**
 * How long killed processes may take to leave their cgroup before it is left behind (and
 * logged). SIGKILL takes milliseconds; only a process stuck in the kernel takes longer.
 */
const EMPTY_WAIT_MS = 2000

export interface CgroupProbeOptions {
  /** The shell that runs the wrapper script (default /bin/sh). */
  shell?: string
  logger?: Logger
}

export type CgroupProbe = { cgroups: CallCgroups, reason?: undefined } | { cgroups: null, reason: string }

/**
 * Finds whether this process can make per-call cgroups: a cgroup2 hierarchy is mounted, a
 * child of this process's own cgroup can be made, has cgroup.kill (Linux 5.14+), and the wrapper
 * really moves a process into it. Otherwise says why not.
 */
export async function probeCgroups (options: CgroupProbeOptions = {}): Promise<CgroupProbe> {
  const shell = options.shell ?? '/bin/sh'
  let parent: string
  try {
    parent = await ownCgroupDir()
  } catch (err) {
    return { cgroups: null, reason: (err as Error).message }
  }
  const cgroups = new CallCgroups(parent, shell, options.logger)
  let probe: string
  try {
    probe = await cgroups.create()
  } catch (err) {
    return { cgroups: null, reason: `cannot create a cgroup under ${parent} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` }
  }
  try {
    await access(join(probe, 'cgroup.kill'))
    const [program, ...args] = cgroups.wrap(probe, [shell, '-c', ':'])
    const failure = await new Promise<string | null>((resolve) => {
      const child = spawn(program as string, args, { stdio: ['ignore', 'ignore', 'pipe'] })
      // First: a spawn out of file descriptors (EMFILE) emits 'error' on the next tick and has no pipes.
      child.on('error', (err: NodeJS.ErrnoException) => resolve(`${shell}: ${err.code ?? err.message}`))
      let stderr = ''
      ;(child.stderr as Readable | null)?.on('data', (chunk: Buffer) => { stderr += chunk.toString('utf8') })
      child.on('close', (code) => resolve(code === 0 ? null : (stderr.trim() || `the wrapper exited with ${String(code)}`)))
    })
    if (failure !== null) return { cgroups: null, reason: `cannot move a process into a cgroup: ${failure}` }
    await cgroups.removeLeftovers()
    return { cgroups }
  } catch (err) {
    return { cgroups: null, reason: `no cgroup.kill in ${parent} (Linux 5.14+ has it): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` }
  } finally {
    await cgroups.destroy(probe)
  }
}

/**
 * Removes the per-call cgroups a server gone without cleaning up left beside this process (what
 * they hold is killed), without probing: a server started with no command agent after one that
 * had some still clears what that one left running. Never throws.
 */
export async function removeLeftoverCgroups (options: CgroupProbeOptions = {}): Promise<void> {
  const parent = await ownCgroupDir().catch(() => null)
  if (parent !== null) await new CallCgroups(parent, options.shell ?? '/bin/sh', options.logger).removeLeftovers().catch(() => {})
}

/** This process's cgroup2 directory, from /proc/self/mountinfo and /proc/self/cgroup. */
async function ownCgroupDir (): Promise<string> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '')
  // "id parent major:minor root mountpoint options ... - fstype source superoptions"
  const mount = mountinfo.split('\n').map((line) => line.split(' ')).find((fields) => fields[fields.indexOf('-') + 1] === 'cgroup2')
  if (mount === undefined) throw new Error('no cgroup2 hierarchy is mounted')
  const [root = '/', point = ''] = [mount[3], mount[4]].map((field) => field?.replace(/\\040/gu, ' '))
  const line = (await readFile('/proc/self/cgroup', 'utf8').catch(() => '')).split('\n').find((item) => item.startsWith('0::'))
  if (line === undefined) throw new Error('this process has no cgroup2 cgroup')
  const own = line.slice(3)
  // The mount shows the hierarchy from `root` down; our cgroup must be inside it.
  if (root !== '/' && own !== root && !own.startsWith(`${root}/`)) throw new Error(`this process's cgroup ${own} is outside the mounted ${root}`)
  return join(point, root === '/' ? own : own.slice(root.length))
}

/** Makes, kills and removes per-call cgroups under one parent; no state beyond where. */
export class CallCgroups {
  constructor (readonly parent: string, private readonly shell: string, private readonly log?: Logger) {}

  /** A new, empty cgroup for one call. */
  async create (): Promise<string> {
    const dir = join(this.parent, `taskvault-${process.pid}-${randomUUID().slice(0, 8)}`)
    await mkdir(dir)
    return dir
  }

  /** The command line that runs `argv` inside `dir`. */
  wrap (dir: string, argv: readonly string[]): string[] {
    return [this.shell, '-c', WRAPPER, WRAPPER_NAME, dir, ...argv]
  }

  /**
   * SIGKILLs everything in `dir`, at once. Synchronous (one small write to cgroupfs) so that it
   * is done before an abort listener returns: a call abandoned at shutdown is not awaited.
   */
  kill (dir: string): void {
    try {
      writeFileSync(join(dir, 'cgroup.kill'), '1')
    } catch {}
  }

  /**
   * Removes the per-call cgroups that a server gone without cleaning up (a crash, a kill) left
   * here, killing what they still hold: named for a pid that is no longer running.
   */
  async removeLeftovers (): Promise<void> {
    const names = await readdir(this.parent).catch(() => [])
    for (const name of names) {
      const pid = LEFTOVER.exec(name)?.[1]
      if (pid === undefined || Number(pid) === process.pid || pidAlive(Number(pid))) continue
      this.log?.warn({ cgroup: join(this.parent, name) }, 'Removing a command call\'s cgroup left by a server that is gone')
      await this.destroy(join(this.parent, name))
    }
  }

  /**
   * Kills everything in `dir`, waits for it to empty, and removes it. Never throws: a cgroup
   * that cannot be removed is logged (what it held was killed; an operator can rmdir it later).
   */
  async destroy (dir: string): Promise<void> {
    this.kill(dir)
    try {
      const deadline = Date.now() + EMPTY_WAIT_MS
      while (/^populated 1$/mu.test(await readFile(join(dir, 'cgroup.events'), 'utf8')) && Date.now() < deadline) await sleep(POLL_MS)
    } catch {}
    await rmdir(dir).catch((err: NodeJS.ErrnoException) => {
      this.log?.warn({ cgroup: dir, code: err.code }, 'Could not remove a command call\'s cgroup; what it holds was killed, remove it with rmdir')
    })
  }
}
