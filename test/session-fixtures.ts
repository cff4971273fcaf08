/** Session files written straight to disk, for tests that prepare a storage folder by hand. */

/** The text of a stored session whose tasks have `statuses`, each done one (Completed or Failed) at `finished`. */
export function storedSession (id: string, statuses: string[], finished: string, instruction = 'step'): string {
  const tasks = statuses.map((status, i) => ({
    id: `task_${i + 1}`,
    instruction: `${instruction} ${i + 1}`,
    task_type: 'General',
    status,
    result: status === 'Completed' ? 'ok' : null,
    error: status === 'Failed' ? 'boom' : null,
    confidence: null,
    created_at: '2025-01-01T00:00:00.000Z',
    started_at: null,
    completed_at: status === 'Completed' || status === 'Failed' ? finished : null,
    attempts: 1
  }))
  const current = tasks.findIndex((task) => task.status === 'Pending' || task.status === 'InProgress')
  const file = { session_id: id, created_at: '2025-01-01T00:00:00.000Z', updated_at: finished, session: { session_id: id, tasks, current_index: current === -1 ? tasks.length : current } }
  return JSON.stringify(file, null, 2) + '\n'
}
