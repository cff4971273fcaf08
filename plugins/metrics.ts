import { Type } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { collectDefaultMetrics, Registry, type Metric } from 'prom-client'
import { RequestHistogram } from '../services/metrics/request-histogram.js'
import { InvalidOptionsError } from '../services/errors.js'
import { checkOptions } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** This app's own prom-client registry (never the process-wide default one). */
    metricsRegistry: Registry
  }
}

export interface MetricsPluginOptions {
  /** Where the text format is served (default `/metrics`). */
  path?: string
  /** Require an API key (the `verifyApiKey` of taskvault-auth) to scrape. Default false. */
  requireApiKey?: boolean
  /**
   * Node's process metrics (CPU, memory, event loop, GC). They install observers that live as
   * long as the process, so only the process's owner (server.ts) should turn them on. Default false.
   */
  processMetrics?: boolean
}

export const MetricsOptionsSchema = Type.Object({
  path: Type.Optional(Type.String({ pattern: '^/' })),
  requireApiKey: Type.Optional(Type.Boolean()),
  processMetrics: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

/** The request durations' metric, by its name in the registry. */
const DURATION = 'http_request_duration_seconds'

/**
 * Counts in `registry`'s request durations (as `unmatched`) a request answered before any route,
 * so without the hooks that time the rest: a URL the router refuses, an Expect not supported, a
 * client error (bytes that are no HTTP, headers too large, a request too slow to arrive, CONNECT).
 * The server's options call it (app.ts); a registry without the metric is left alone.
 */
export function observeUnrouted (registry: Registry, method: string, statusCode: number, seconds: number): void {
  const duration = registry.getSingleMetric(DURATION) as unknown as RequestHistogram | undefined
  duration?.observe(method, 'unmatched', statusCode, seconds)
}

/** Request durations are milliseconds for reads, up to minutes for execute-all. */
const HTTP_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]

/**
 * Prometheus metrics: a registry of this app's own (so two apps in one process never share
 * counters), request durations of every route registered after this plugin, and the text
 * format at `path`. taskvault's own metrics join through the taskvault plugin's `metricsRegistry`.
 */
export default fp<MetricsPluginOptions>(async function metricsPlugin (app, options) {
  checkOptions('taskvault-metrics', MetricsOptionsSchema, options)
  if (options.requireApiKey === true && !app.hasPlugin('taskvault-auth')) {
    throw new InvalidOptionsError('taskvault-metrics', 'requireApiKey needs taskvault-auth registered first')
  }
  const registry = new Registry()
  if (options.processMetrics === true) {
    collectDefaultMetrics({ register: registry })
    // Gauges named `_total` break the naming rules (`promtool check metrics` fails on them);
    // each is the sum of the by-type gauge without the suffix, e.g. sum(nodejs_active_handles).
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name)
  }
  const duration = new RequestHistogram(DURATION, 'HTTP requests by method, route pattern and status code', HTTP_BUCKETS)
  registry.registerMetric(duration as unknown as Metric)
  app.decorate('metricsRegistry', registry)
  app.addHook('onResponse', (request, reply, done) => {
    // The route pattern, never the raw URL: ids in paths would make a series per session.
    duration.observe(request.method, request.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000)
    done()
  })
  app.get(options.path ?? '/metrics', {
    schema: { hide: true },
    ...(options.requireApiKey === true && { onRequest: app.verifyApiKey })
  }, async (_request, reply) => {
    const text = await registry.metrics()
    return reply.type(registry.contentType).send(text)
  })
}, { name: 'taskvault-metrics', fastify: '5.x' })
