// What goes around the figures in the output: the machine they were measured on, and the table.
import { execFileSync } from 'node:child_process'
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs'
import os from 'node:os'
import { round } from './stats.mjs'

/** CPU, memory, Node, the temp folder's disk, the kernel's state (`kernel()`, taken at start), and the load average at start and now. */
export function machine (loadAtStart, kernelInfo) {
  const describeDisk = () => {
    try {
      const source = execFileSync('df', ['--output=source,fstype', os.tmpdir()], { encoding: 'utf8' }).trim().split('\n').pop().trim().split(/\s+/)
      const dev = source[0].replace('/dev/', '').replace(/\d+$/, '')
      let rotational = null
      try { rotational = readFileSync(`/sys/block/${dev}/queue/rotational`, 'utf8').trim() === '1' } catch {}
      return { device: source[0], fstype: source[1], rotational }
    } catch { return null }
  }
  return {
    cpus: os.cpus().length,
    cpu_model: os.cpus()[0]?.model ?? 'unknown',
    memory_gb: round(os.totalmem() / 2 ** 30, 1),
    node: process.version,
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
    tmpdir: os.tmpdir(),
    disk: describeDisk(),
    uv_threadpool_size: Number(process.env.UV_THREADPOOL_SIZE ?? 4),
    kernel: kernelInfo,
    loadavg_at_start: loadAtStart.map((x) => round(x, 2)),
    loadavg_at_end: os.loadavg().map((x) => round(x, 2))
  }
}

/**
 * What makes a system call cost more or less here: the same VM type has run with the kernel's
 * Meltdown mitigation (page-table isolation) forced on and without PCID, where every system call
 * empties the TLB; its HTTP ratios then moved by a quarter. `syscall_us`: one fstat, median of 20 x 1,000.
 */
export function kernel () {
  const read = (path) => { try { return readFileSync(path, 'utf8').trim() } catch { return null } }
  const flags = read('/proc/cpuinfo')?.match(/^flags\s*:(.*)$/m)?.[1].trim().split(/\s+/) ?? []
  // A descriptor of our own: stdin may be closed under a supervisor.
  const fd = openSync(new URL(import.meta.url), 'r')
  const times = []
  try {
    for (let r = 0; r < 20; r++) {
      const t = process.hrtime.bigint()
      for (let i = 0; i < 1000; i++) fstatSync(fd)
      times.push(Number(process.hrtime.bigint() - t) / 1000 / 1000)
    }
  } finally {
    closeSync(fd)
  }
  times.sort((a, b) => a - b)
  return {
    meltdown: read('/sys/devices/system/cpu/vulnerabilities/meltdown'),
    pcid: flags.includes('pcid'),
    syscall_us: round(times[10], 2)
  }
}

/** One line about it for the run's header. */
export function describeKernel ({ meltdown, pcid, syscall_us: us }) {
  return `kernel: Meltdown ${meltdown ?? 'unknown'}, ${pcid ? 'PCID' : 'no PCID'}; a system call (fstat) takes ${us} µs`
}

function fmt (value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '-'
  const abs = Math.abs(value)
  if (abs >= 1000) return Math.round(value).toLocaleString('en-US')
  if (abs >= 100) return value.toFixed(0)
  if (abs >= 10) return value.toFixed(1)
  if (abs >= 1) return value.toFixed(2)
  return value.toFixed(3)
}

/** The rows as a Markdown table (what the run prints and RESULTS.md quotes). */
export function table (list) {
  const header = ['figure', 'ours', 'floor / peer', 'unit', 'ratio', 'ratio of', 'goal', 'met']
  const lines = list.map((r) => [r.figure, fmt(r.ours), `${fmt(r.floor)}${r.floor_label ? ` (${r.floor_label})` : ''}`, r.unit, fmt(r.ratio), r.ratio_of, r.goal, r.met === null ? '-' : r.met ? 'yes' : 'NO'])
  const md = [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...lines.map((l) => `| ${l.join(' | ')} |`)]
  return md.join('\n')
}
