/**
 * taskvault as a library. The default export is the composite Fastify plugin; the building
 * blocks are subpath exports (`taskvault/persistence`, `taskvault/manager`, ...: see package.json).
 */
import taskvault from './plugins/taskvault.js'

export default taskvault
export { taskvault }
export type { TaskvaultOptions } from './plugins/taskvault.js'
export type { ArchiveScheduler } from './services/archive/archive-scheduler.js'
// AgentError: what an executor throws to ask for a retry (`transient: true`).
export { AgentError, TaskvaultError, InvalidOptionsError } from './services/errors.js'
export type { ExecutionContext, ExecutionResult, Executor, ExecutorDefinition, Executors } from './services/runner/executors.js'
export type { SessionStore } from './services/store/store.js'
export type { AgentCallEvent, ExecutedTask, TaskManager } from './services/task-manager.js'
export type { SessionFile, Task, TaskStatus, TaskType } from './schemas/session.js'
