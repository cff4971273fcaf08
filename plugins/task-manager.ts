import { Type, type Static } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { TASK_TYPES } from '../schemas/session.js'
import { probeCgroups, removeLeftoverCgroups } from '../services/runner/agents/cgroup.js'
import { CALL_CLEANUP_WAIT_MS, RunningCalls, type CommandRuntime } from '../services/runner/agents/command.js'
import { parseAgentsConfig, PolicyOptions, type AgentsConfig } from '../services/runner/agents/spec.js'
import { echoedTypes, unroutedTypes, type Executors } from '../services/runner/executors.js'
import { TaskManager } from '../services/task-manager.js'
import { COMMAND_SETTINGS, MANAGER_SETTINGS, resolveSettings, settingOptions, type Resolved } from '../schemas/options.js'
import { appSettings, checkOptions, functionOption, FunctionOption, inTermsOf, withOptionErrors } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    taskManager: TaskManager
  }
}

/** Per key a function, or `{ run, ...policy }`: a misspelt policy field is refused at register, before any storage is opened. */
const ExecutorOption = Type.Union([FunctionOption, Type.Object({ run: FunctionOption, ...PolicyOptions }, { additionalProperties: false })])

/** Programmatic agents by task type or `default`; these take precedence over configured ones. */
export const ExecutorsOption = Type.Unsafe<Executors>(Type.Object(
  Object.fromEntries(['default', ...TASK_TYPES].map((type) => [type, Type.Optional(ExecutorOption)])),
  { additionalProperties: false }
))

export const TaskManagerOptionsSchema = Type.Object({
  ...settingOptions(MANAGER_SETTINGS).properties,
  ...settingOptions(COMMAND_SETTINGS).properties,
  executors: Type.Optional(ExecutorsOption),
  /** Agent specs (the TASK_AGENTS shape); used instead of the TASK_AGENTS setting when given. */
  agents: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  /**
   * The environment agents see (default process.env): where specs' `api_key_env` and
   * `headers_env` are looked up, and what a command agent's program inherits (less the server's
   * own secrets). Given, it is the whole of it: pass `{ ...process.env, ... }` to add to the host's.
   */
  env: Type.Optional(Type.Record(Type.String(), Type.Union([Type.String(), Type.Undefined()]))),
  /** Time source for timestamps (tests). */
  clock: Type.Optional(functionOption<() => Date>())
}, { additionalProperties: false })

export type TaskManagerPluginOptions = Static<typeof TaskManagerOptionsSchema>

/** Every option backed by a setting, for errors that name the setting. */
const SETTINGS = { ...MANAGER_SETTINGS, ...COMMAND_SETTINGS, agents: 'TASK_AGENTS' } as const

/**
 * The task manager. Sessions are restored before the server listens (onReady); on close it
 * lets running tasks finish within the grace period, then flushes every pending write.
 * `close()` is idempotent past the grace period, so running it in both hooks costs nothing.
 */
export default fp<TaskManagerPluginOptions>(async function taskManagerPlugin (app, options) {
  checkOptions('taskvault-task-manager', TaskManagerOptionsSchema, options)
  const env = options.env ?? process.env
  const settings = appSettings(app)
  const agents = await withOptionErrors(app, 'taskvault-task-manager', SETTINGS, async () => agentsConfig(options.agents ?? settings.TASK_AGENTS, env))
  const command = await commandRuntime(app, resolveSettings(COMMAND_SETTINGS, options, settings), agents)
  const manager = await withOptionErrors(app, 'taskvault-task-manager', SETTINGS, async () => new TaskManager({
    ...resolveSettings(MANAGER_SETTINGS, options, settings),
    store: app.persistence,
    executors: options.executors,
    agents,
    env,
    command,
    clock: options.clock,
    logger: app.log
  }))
  app.decorate('taskManager', manager)
  const routing = Object.fromEntries(Object.entries(manager.agents).map(([key, agent]) => [key, agent.kind]))
  // Executors for some task types only leave the others to echo, whose results would pass for work done.
  const echoed = agents === undefined ? echoedTypes(manager.agents) : []
  if (echoed.length === TASK_TYPES.length) {
    app.log.warn(inTermsOf(app, SETTINGS, 'TASK_AGENTS is not set: every task goes to the echo demo agent, which returns the instruction as its result'))
  } else if (echoed.length > 0) {
    app.log.warn({ task_types: echoed }, inTermsOf(app, SETTINGS, 'TASK_AGENTS is not set and executors has no "default" entry nor one for these task types: their tasks go to the echo demo agent, which returns the instruction as its result'))
  }
  app.log.info({ agents: routing }, 'Agents by task type')
  const unrouted = unroutedTypes(manager.agents)
  if (unrouted.length > 0) app.log.warn({ task_types: unrouted }, inTermsOf(app, SETTINGS, 'TASK_AGENTS has no "default" entry and none for these task types: their tasks fail, naming the agent missing'))
  app.addHook('onReady', async () => {
    await manager.restore()
  })
  // Drain in preClose, before the server waits for connections: nothing acknowledged may
  // depend on how long a client keeps its socket open. onClose flushes what came after.
  app.addHook('preClose', async () => {
    // Stop accepting connections now, not after the grace period; Fastify's own close later
    // tolerates the server being closed already.
    if (app.server.listening) app.server.close()
    await manager.close()
  })
  app.addHook('onClose', async () => {
    try {
      await manager.close({ last: true })
    } finally {
      // Calls abandoned past the grace period were killed; their cgroups go before the process does.
      await command.running?.ended(CALL_CLEANUP_WAIT_MS + command.drainMs)
      // Logged here, once, for every host: app.close() rejects only with the last failing hook's
      // error, which a later one (releasing the storage lock) would replace.
      for (const { sessionId, cause } of manager.registry.lostChanges()) {
        app.log.error({ session_id: sessionId, ...(cause !== undefined && { err: cause }) }, 'Unsaved changes lost at shutdown')
      }
    }
  })
  // Once shutdown begins, answers close their connection so the server can stop promptly.
  app.addHook('onSend', (_request, reply, payload, done) => {
    if (manager.shuttingDown) reply.header('connection', 'close')
    done(null, payload)
  })
}, { name: 'taskvault-task-manager', fastify: '5.x', dependencies: ['taskvault-persistence'] })
/**
 * How command agents end and are contained. The cgroup probe runs only when a command agent is
 * configured, and says once at startup what a command can leave running.
 */
async function commandRuntime (app: FastifyInstance, settings: Resolved<typeof COMMAND_SETTINGS>, agents: AgentsConfig | undefined): Promise<CommandRuntime> {
  const drainMs = settings.commandDrainMs
  if (!Object.values(agents ?? {}).some((spec) => spec.kind === 'command')) {
    if (settings.commandCgroup !== 'off') await removeLeftoverCgroups({ logger: app.log })
    return { drainMs, cgroups: null }
  }
  const mode = settings.commandCgroup
  const probe = mode === 'off' ? { cgroups: null, reason: 'TASK_COMMAND_CGROUP=off' } : await probeCgroups({ logger: app.log })
  if (probe.cgroups !== null) {
    app.log.info({ cgroup_parent: probe.cgroups.parent }, 'Command agents run in a cgroup per call: everything a command starts, setsid or not, is killed when its call ends')
  } else {
    app.log.warn({ reason: probe.reason }, 'Command agents are contained by their process group only: a process a command starts that calls setsid (or joins another group) is not killed with it and can outlive its call')
  }
  // A process that exits with calls still running (a second signal, a shutdown past its time)
  // kills their programs on the way out: none outlives the server to run beside the task's retry.
  return { drainMs, cgroups: probe.cgroups, running: new RunningCalls() }
}

/** The `agents` option or the TASK_AGENTS setting, validated; undefined when neither names agents. */
function agentsConfig (source: Record<string, unknown> | string, env: NodeJS.ProcessEnv): AgentsConfig | undefined {
  if (typeof source === 'string' && source.trim() === '') return undefined
  return parseAgentsConfig(source, env)
}
