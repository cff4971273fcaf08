// Small statistics helpers shared by the bench sections.

export function median (values) {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** Nearest-rank percentile (p in 0..100) of an unsorted array. */
export function percentile (values, p) {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank]
}

export const now = () => performance.now()

/** Runs `fn` and returns elapsed milliseconds. */
export async function timed (fn) {
  const start = performance.now()
  await fn()
  return performance.now() - start
}

export function round (value, digits = 3) {
  if (!Number.isFinite(value)) return value
  const f = 10 ** digits
  return Math.round(value * f) / f
}

/** Forces a full collection when node runs with --expose-gc (the bench script passes it). */
export function collect () {
  if (typeof globalThis.gc === 'function') {
    globalThis.gc()
    globalThis.gc()
  }
}

/**
 * One round of `n` calls to each variant, interleaved call by call in rotating order so every
 * variant sees the same disk moments; returns each variant's call times in ms.
 */
export async function interleaved (variants, n) {
  const names = Object.keys(variants)
  const times = Object.fromEntries(names.map((name) => [name, []]))
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < names.length; k++) {
      const name = names[(i + k) % names.length]
      const t = performance.now()
      await variants[name]()
      times[name].push(performance.now() - t)
    }
  }
  return times
}
