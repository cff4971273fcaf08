import type { Static } from '@sinclair/typebox'
import type { ExecutedTask as ExecutedTaskSchema } from '../schemas/api.js'
import type { Task } from '../schemas/session.js'
import type { TaskEventData, TaskEventName } from './events/task-events.js'

/** Types the services share, kept in a leaf so that lower modules never import the manager for them. */

/** The subset of pino's API the manager logs through, so it runs without Fastify. */
export interface Logger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

/** One task's outcome, as execute answers it. */
export type ExecutedTask = Static<typeof ExecutedTaskSchema>

export interface RestoreReport {
  sessions: number
  /** Sessions in the archive (indexed, not loaded). */
  archivedSessions: number
  failedLoads: number
  resetTasks: number
  ms: number
}

/** One call to an agent, for metrics and logs. `agent` is the routing key that chose it (a task type or `default`). */
export interface AgentCallEvent {
  session_id: string
  task_id: string
  task_type: Task['task_type']
  agent: string
  attempt: number
  outcome: 'ok' | 'error' | 'timeout' | 'aborted' | 'cancelled'
  ms: number
}

/** A task that reached Completed or Failed, once that is durable. */
export interface TaskFinishedEvent {
  session_id: string
  task_id: string
  status: 'Completed' | 'Failed'
}

/** What the manager reports as it works; observers (metrics, the event stream) subscribe without the manager knowing them. */
export interface TaskManagerEvents {
  'agent-call': [AgentCallEvent]
  'task-finished': [TaskFinishedEvent]
  restore: [RestoreReport]
  /** Live-view events (services/task-events.ts), each once its change is durable; built only while someone listens. */
  'task-event': [TaskEventName, TaskEventData]
}

/** Active sessions and their tasks by state: what /stats counts, from memory or from a shared store's rows. */
export interface SessionCounts {
  total_sessions: number
  active_sessions: number
  completed_sessions: number
  total_tasks: number
  completed_tasks: number
  failed_tasks: number
  pending_tasks: number
  in_progress_tasks: number
}
