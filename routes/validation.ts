import { Ajv, type Options } from 'ajv'
import type { FastifySchemaCompiler } from 'fastify'

const shared: Options = {
  // Unknown fields are a 400, never silently dropped.
  removeAdditional: false,
  useDefaults: true,
  allErrors: false
}

/**
 * Request validation. Query strings and path params arrive as text, so they are coerced to
 * the declared types; JSON bodies are typed already, so a number where a string belongs is a 400.
 */
export function createValidatorCompiler (): FastifySchemaCompiler<unknown> {
  const bodyAjv = new Ajv({ ...shared, coerceTypes: false })
  const textAjv = new Ajv({ ...shared, coerceTypes: 'array' })
  return ({ schema, httpPart }) => (httpPart === 'body' ? bodyAjv : textAjv).compile(schema as object)
}
