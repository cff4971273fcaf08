/**
 * Another Fastify service that embeds taskvault: durable task sessions under /agents, run by
 * this service's own agent function. The same file runs against the published package:
 *
 *   npm run build && PORT=7100 AGENT_TASKS_DIR=/tmp/agent-tasks node dist/examples/embed.js
 *   curl -s -X POST localhost:7100/agents/create -H 'content-type: application/json' \
 *     -d '{"session_id": "review_42", "instructions": "1. Read the diff\n2. Summarise the risks"}'
 *   curl -s -X POST localhost:7100/agents/execute -H 'content-type: application/json' -d '{"session_id": "review_42"}'
 */
import Fastify from 'fastify'
import taskvault, { type Executor } from 'taskvault'

/** This service's agent. A real one would call a model; it gets an AbortSignal for shutdown. */
const reviewer: Executor = async (task, { session_id: sessionId, attempt }) => ({
  result: `reviewed "${task.instruction}" for ${sessionId} (attempt ${attempt})`,
  confidence: 0.8
})

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })

// The host's own routes live beside taskvault's.
app.get('/', async () => ({ service: 'review-service', tasks: '/agents' }))

await app.register(taskvault, {
  prefix: '/agents',
  storageDir: process.env.AGENT_TASKS_DIR ?? 'data/agent-tasks',
  executors: { default: reviewer },
  archiveDays: 7
})

// With one registration the services are decorators of the host (decorate: true, the default).
app.get('/ready', async (_request, reply) => {
  if (!app.taskManager.ready) return reply.code(503).send({ status: 'restoring' })
  return { status: 'ready', sessions: app.taskManager.stats().total_sessions }
})

// app.close() drains running tasks and flushes writes before the process exits.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    app.log.info({ signal }, 'shutting down')
    void app.close().then(() => process.exit(0), () => process.exit(1))
  })
}

await app.listen({ port: Number(process.env.PORT ?? 7100), host: process.env.HOST ?? '127.0.0.1' })
