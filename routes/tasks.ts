import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { CreateBody, CreateHeaders, ExecuteAllBody, ExecutedTask, LIST_DEFAULTS, ListQuery, NoQuery, Progress as ProgressSchema, RetryBody, SessionIdBody, SessionParams, SessionQuery, responses } from '../schemas/api.js'
import { Task } from '../schemas/session.js'
import { Type, type Static } from '@sinclair/typebox'
import { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { ROUTE_SETTINGS, SETTING_DEFAULTS, settingOptions } from '../schemas/options.js'
import { checkOptions, FunctionOption } from '../plugins/options.js'
import { acceptJsonOnly, refuseBody } from '../http/json-body.js'
import { JsonArrayStream } from '../http/json-stream.js'
import { answersCutAtClose, guardStream } from '../http/stalled-answers.js'
import { InvalidInstructionsError, InvalidOptionsError } from '../services/errors.js'
import { createSerializerCompiler, createValidatorCompiler } from '../http/validation.js'
import { classifyTask, isBlank, parseInstructions } from '../services/session/parser.js'
import type { Progress, TaskSpec } from '../services/session/session.js'
import { ALL_SESSIONS } from '../services/task-manager.js'

/**
 * Largest request body in bytes, and how long a streamed answer may wait on its client (default:
 * the settings' defaults; the taskvault plugin passes the settings). `cutAfterMs`: once the app
 * is closing, how long a streamed answer still being sent may take before it is cut (default: never).
 */
export const TaskRoutesOptionsSchema = Type.Object({
  ...settingOptions(ROUTE_SETTINGS).properties,
  cutAfterMs: Type.Optional(Type.Integer({ minimum: 0 })),
  // Fastify's own register options: this plugin is a context of its own, so they apply to its routes.
  logLevel: Type.Optional(Type.String()),
  logSerializers: Type.Optional(Type.Object({}, { additionalProperties: FunctionOption }))
}, { additionalProperties: false })

export type TaskRoutesOptions = Static<typeof TaskRoutesOptionsSchema>

/** The seed's task API, mounted under /api/v1/tasks. Handlers stay thin: the manager does the work. */
const taskRoutes: FastifyPluginAsyncTypebox<TaskRoutesOptions> = async (app, options) => {
  checkOptions('taskvault-routes', TaskRoutesOptionsSchema, options)
  // Registered alone (a building block), it needs its services first and keeps its own validation (unknown fields are a 400).
  for (const [decorator, plugin] of [['taskManager', 'taskvault/task-manager'], ['verifyApiKey', 'taskvault/auth']] as const) {
    if (!app.hasDecorator(decorator)) throw new InvalidOptionsError('taskvault-routes', `register ${plugin} before taskvault/routes (no '${decorator}' decorator)`)
  }
  app.setValidatorCompiler(createValidatorCompiler())
  app.setSerializerCompiler(createSerializerCompiler())
  const manager = app.taskManager
  const bodyLimit = options.bodyLimit ?? SETTING_DEFAULTS.BODY_LIMIT
  const stallMs = options.answerStallMs ?? SETTING_DEFAULTS.TASK_ANSWER_STALL_MS
  const serializer = createSerializerCompiler()
  const json = {
    task: serializer({ schema: Task, method: 'GET', url: '/list', httpStatus: '200' }) as (task: Task) => string,
    executed: serializer({ schema: ExecutedTask, method: 'POST', url: '/execute-all', httpStatus: '200' }) as (task: Static<typeof ExecutedTask>) => string,
    progress: serializer({ schema: ProgressSchema, method: 'POST', url: '/execute-all', httpStatus: '200' }) as (progress: Progress) => string
  }
  const sending = answersCutAtClose(app, options.cutAfterMs)
  /** Sends a large answer as its client reads it: see JsonArrayStream. */
  const stream = <T>(request: FastifyRequest, reply: FastifyReply, answer: JsonArrayStream<T>): FastifyReply => {
    void reply.type('application/json; charset=utf-8')
    if (request.method === 'HEAD') {
      answer.destroy()
      return reply.send(Readable.from([]))
    }
    sending.add(reply.raw)
    const guarded = guardStream(request.raw, reply.raw, answer, stallMs, {
      onCut: () => request.log.warn({ stall_ms: stallMs }, 'Answer cut: its client took nothing of it for TASK_ANSWER_STALL_MS'),
      onDone: () => sending.delete(reply.raw)
    })
    // The client left while the answer was made (an execute-all's run): nobody to stream it to.
    return reply.send(guarded ? answer : '')
  }
  app.addHook('onRequest', app.verifyApiKey)
  // A DELETE takes no body; many clients name JSON on every request anyway.
  acceptJsonOnly(app, (request) => request.method === 'DELETE' ? { value: undefined } : null)

  app.post('/create', { bodyLimit, schema: { querystring: NoQuery, headers: CreateHeaders, body: CreateBody, response: responses.create } }, async (request, reply) => {
    const { session_id: sessionId } = request.body
    const key = request.headers['idempotency-key']
    // A replay is answered whatever the limits are now (they may have been lowered since): create() judges that.
    const specs = taskSpecs(request.body, (count) => { if (key === undefined) manager.assertTaskCount(sessionId, count) })
    const created = await manager.create(sessionId, specs, key)
    if (created.replayed) void reply.header('idempotent-replayed', 'true')
    return {
      session_id: sessionId,
      task_ids: created.tasks.map((task) => task.id),
      total_tasks: created.tasks.length,
      tasks: created.tasks
    }
  })

  app.post('/execute', { bodyLimit, schema: { querystring: NoQuery, body: SessionIdBody, response: responses.execute } }, async (request) => {
    const { task, progress } = await manager.executeNext(request.body.session_id)
    return { ...task, progress }
  })

  app.post('/execute-all', { bodyLimit, schema: { querystring: NoQuery, body: ExecuteAllBody, response: responses.executeAll } }, async (request, reply) => {
    const { session_id: sessionId, wait } = request.body
    if (wait === false) {
      const progress = await manager.startBackgroundRun(sessionId)
      return reply.code(202).send({ session_id: sessionId, status: 'running' as const, progress })
    }
    const { results, progress } = await manager.executeAll(sessionId)
    if (textChars(results) > STREAM_FROM_CHARS) {
      const head = `{"session_id":${JSON.stringify(sessionId)},"total_executed":${results.length},"results":[`
      return stream(request, reply, new JsonArrayStream(head, results, json.executed, `],"progress":${json.progress(progress)}}`))
    }
    return { session_id: sessionId, total_executed: results.length, results, progress }
  })

  app.post('/cancel', { bodyLimit, schema: { querystring: NoQuery, body: SessionIdBody, response: responses.cancel } }, async (request) => {
    const sessionId = request.body.session_id
    const { cancelled_task_id: cancelledTaskId, progress } = await manager.cancel(sessionId)
    return { session_id: sessionId, cancelled_task_id: cancelledTaskId, progress }
  })

  app.post('/retry', { bodyLimit, schema: { querystring: NoQuery, body: RetryBody, response: responses.retry } }, async (request) => {
    const { session_id: sessionId, task_id: taskId } = request.body
    const { task_ids: taskIds, progress } = await manager.retry(sessionId, taskId)
    return { session_id: sessionId, task_ids: taskIds, progress }
  })

  app.get('/progress', { schema: { querystring: SessionQuery, response: responses.progress } }, async (request) => {
    const sessionId = request.query.session_id
    // Active sessions answer from memory without waiting on anything; archived ones are read.
    const active = manager.activeProgress(sessionId)
    if (active !== null) {
      const body = progressBody(sessionId, active, manager.isRunning(sessionId))
      const waiting = body.running ? manager.waitingFor(sessionId) : null
      return waiting === null ? body : { ...body, waiting }
    }
    const { progress, archived } = await manager.findProgress(sessionId)
    if (archived) return { ...progressBody(sessionId, progress, false), archived }
    // A shared store: read from the row just now, running on this replica or another.
    const body = progressBody(sessionId, progress, manager.isRunning(sessionId))
    const waiting = body.running ? manager.waitingFor(sessionId) : null
    return waiting === null ? body : { ...body, waiting }
  })

  app.get('/list', { schema: { querystring: ListQuery, response: responses.list } }, async (request, reply) => {
    // The validator has filled in the defaults already; these only tell TypeScript so.
    const { session_id: sessionId, limit = LIST_DEFAULTS.limit, offset = LIST_DEFAULTS.offset, archived: filter = LIST_DEFAULTS.archived } = request.query
    if (sessionId === ALL_SESSIONS) {
      // A run waiting for storage says so, as /progress does: one lookup per running session shown.
      const waits = (s: { session_id: string, running?: boolean }): boolean => s.running === true && manager.waitingFor(s.session_id) !== null
      if (filter === 'exclude') {
        const page = await manager.list(offset, limit)
        return { total: page.total, sessions: page.sessions.map((s) => waits(s) ? { ...s, waiting: 'storage' as const } : s), offset, limit }
      }
      const page = await manager.listWithArchived(offset, limit, filter)
      // Only the page is looked at: a running marker costs one map lookup per session shown.
      const sessions = page.sessions.map((s) => {
        const shown = { ...s, running: 'running' in s ? s.running : manager.isRunning(s.session_id) }
        return waits(shown) ? { ...shown, waiting: 'storage' as const } : shown
      })
      return { total: page.total, sessions, offset, limit }
    }
    const { file, archived } = await manager.find(sessionId)
    const tasks = file.session.tasks
    if (textChars(tasks) > STREAM_FROM_CHARS) {
      const head = `{"session_id":${JSON.stringify(sessionId)},"created_at":${JSON.stringify(file.created_at)},"updated_at":${JSON.stringify(file.updated_at)},"current_index":${file.session.current_index},"total":${tasks.length},"tasks":[`
      return stream(request, reply, new JsonArrayStream(head, tasks, json.task, archived ? '],"archived":true}' : ']}'))
    }
    return { session_id: sessionId, created_at: file.created_at, updated_at: file.updated_at, current_index: file.session.current_index, total: tasks.length, tasks, ...(archived && { archived }) }
  })

  app.get('/stats', { schema: { querystring: NoQuery, response: responses.stats } }, async () => manager.statsWithSpace())

  app.delete('/sessions/:session_id', { bodyLimit, preValidation: refuseBody, schema: { querystring: NoQuery, params: SessionParams, response: responses.remove } }, async (request, reply) => {
    await manager.delete(request.params.session_id)
    return reply.code(204).send(null)
  })
}

/**
 * Answers whose tasks hold more text than this (characters of instructions, results and errors)
 * are streamed as the client reads them rather than made whole: see JsonArrayStream.
 */
const STREAM_FROM_CHARS = 1 << 20

function textChars (tasks: ReadonlyArray<{ instruction: string, result: string | null, error: string | null }>): number {
  let chars = 0
  for (const task of tasks) chars += task.instruction.length + (task.result?.length ?? 0) + (task.error?.length ?? 0)
  return chars
}

/** Named fields, not spreads: a spread builds a slow dictionary-mode object on this hot path. */
function progressBody (sessionId: string, p: Progress, running: boolean) {
  return { session_id: sessionId, total: p.total, completed: p.completed, failed: p.failed, pending: p.pending, in_progress: p.in_progress, all_done: p.all_done, percentage: p.percentage, running }
}

/** Either free-text `instructions` or explicit `tasks`, never both; `count` refuses too many before they are typed. */
function taskSpecs (body: CreateBody, count: (tasks: number) => void): TaskSpec[] {
  if ((body.instructions === undefined) === (body.tasks === undefined)) {
    throw new InvalidInstructionsError('send exactly one of "instructions" (free text) or "tasks" (a list)')
  }
  if (body.instructions !== undefined) {
    const items = parseInstructions(body.instructions)
    count(items.length)
    return items.map((instruction) => ({ instruction, task_type: classifyTask(instruction) }))
  }
  const tasks = body.tasks ?? []
  count(tasks.length)
  return tasks.map(({ instruction, task_type: taskType }) => {
    const text = instruction.trim()
    if (isBlank(text)) throw new InvalidInstructionsError('task instructions must not be blank')
    return { instruction: text, task_type: taskType ?? classifyTask(text) }
  })
}

export default taskRoutes
