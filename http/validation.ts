import { Ajv, type ErrorObject, type Options } from 'ajv'
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
  return ({ schema, httpPart }) => {
    const validate = httpPart === 'body' ? bodyAjv.compile(withoutFieldAlternatives(schema as object)) : textAjv.compile(schema as object)
    // Ajv lets Infinity (from "1e400" or "Infinity") past minimum and maximum; no field here takes it.
    const check = (data: unknown): boolean => {
      if (!validate(data)) {
        check.errors = validate.errors?.map(namingValues)
        return false
      }
      const path = nonFiniteNumber(data, '')
      if (path === null) return true
      check.errors = [{ instancePath: path, schemaPath: '', keyword: 'finite', params: {}, message: 'must be a finite number' }]
      return false
    }
    check.errors = null as ErrorObject[] | null | undefined
    return check
  }
}

/** Ajv's "must be equal to one of the allowed values" names them, so a client can correct itself. */
function namingValues (error: ErrorObject): ErrorObject {
  if (error.keyword !== 'enum') return error
  const values = (error.params as { allowedValues?: unknown[] }).allowedValues ?? []
  return { ...error, message: `must be one of ${values.map((value) => JSON.stringify(value)).join(', ')}` }
}

/**
 * A body's top-level `oneOf` of required-field sets (create: `instructions` or `tasks`) tells
 * clients which fields go together. The route checks it itself, with a domain error naming the
 * fields, so Ajv leaves it out: its own error would list every branch.
 */
function withoutFieldAlternatives (schema: object): object {
  const { oneOf, ...rest } = schema as { oneOf?: unknown }
  const requiredSets = Array.isArray(oneOf) && oneOf.every((branch) => typeof branch === 'object' && branch !== null && Object.keys(branch).join() === 'required')
  return requiredSets ? rest : schema
}

/** The JSON-pointer path of the first non-finite number in `value`, or null. */
export function nonFiniteNumber (value: unknown, path: string): string | null {
  if (typeof value === 'number') return Number.isFinite(value) ? null : path
  if (typeof value !== 'object' || value === null) return null
  for (const [key, item] of Object.entries(value)) {
    const found = nonFiniteNumber(item, `${path}/${key}`)
    if (found !== null) return found
  }
  return null
}
