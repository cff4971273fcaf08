/**
 * Joining abort signals without AbortSignal.any: on Node 20 it keeps a reference on each source
 * for as long as that source lives, so joining the process-lifetime shutdown signal once per run
 * or call grows memory without end. These let go of their sources when released or aborted.
 */

/** A signal that aborts (with its reason) when any of `signals` does, and `release`, which stops listening to them. */
export function anySignal (signals: readonly AbortSignal[]): { signal: AbortSignal, release: () => void } {
  const controller = new AbortController()
  const aborted = signals.find((signal) => signal.aborted)
  if (aborted !== undefined) {
    controller.abort(aborted.reason)
    return { signal: controller.signal, release: () => {} }
  }
  const listeners = signals.map((source) => [source, () => { controller.abort(source.reason) }] as const)
  const release = (): void => {
    for (const [source, listener] of listeners) source.removeEventListener('abort', listener)
  }
  for (const [source, listener] of listeners) source.addEventListener('abort', listener, { once: true })
  // Aborted: nothing more to hear from the others.
  controller.signal.addEventListener('abort', release, { once: true })
  return { signal: controller.signal, release }
}

/** Resolves after `ms`, or as soon as any of `signals` aborts (never rejects). */
export function pause (ms: number, signals: readonly AbortSignal[]): Promise<void> {
  const { signal, release } = anySignal(signals)
  if (signal.aborted) return Promise.resolve()
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      release()
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
  })
}
