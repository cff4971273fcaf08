import { SerializerSelector } from '@fastify/fast-json-stringify-compiler'
import { Ajv, type ErrorObject, type Options } from 'ajv'
import type { FastifySchemaCompiler, FastifySerializerCompiler } from 'fastify'

const shared: Options = {
  // Unknown fields are a 400, never silently dropped.
  removeAdditional: false,
  useDefaults: true,
  allErrors: false
}

/**
 * Response serialization from the routes' JSON Schemas, as Fastify's own default: taskvault's
 * routes set it in their context, so a host's serializer compiler for schemas of another kind
 * (a zod type provider's) is not handed theirs.
 */
export function createSerializerCompiler (): FastifySerializerCompiler<unknown> {
  const compile = SerializerSelector()({}, {})
  // Fastify names a status for every response schema; its type leaves room for none.
  return (route) => compile({ ...route, httpStatus: route.httpStatus ?? 'default' })
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
    const numeric = httpPart === 'body' ? [] : numericFields(schema as object)
    // Ajv lets Infinity (from "1e400" or "Infinity") past minimum and maximum; no field here takes it.
    const check = (data: unknown): boolean => {
      const spelled = notDecimal(data, numeric)
      if (spelled !== null) {
        check.errors = [spelled]
        return false
      }
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

/**
 * Ajv's "must be equal to one of the allowed values" names them, and its "must NOT have
 * additional properties" the field it did not know (`instruction` for `instructions`), so a
 * client can correct itself.
 */
function namingValues (error: ErrorObject): ErrorObject {
  if (error.keyword === 'additionalProperties') {
    const name = (error.params as { additionalProperty?: unknown }).additionalProperty
    return typeof name === 'string' ? { ...error, message: `must NOT have additional properties (${JSON.stringify(name.slice(0, 100))} is not one of its fields)` } : error
  }
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

/** Decimal digits, and a fraction where the field is a number: all a number in a query string is written as. */
const INTEGER_TEXT = /^-?[0-9]+$/u
const NUMBER_TEXT = /^-?[0-9]+(\.[0-9]+)?$/u

/** The top-level fields of a query string's (or params') schema that take a number, with the form their text must have. */
function numericFields (schema: object): Array<[string, RegExp]> {
  const properties = (schema as { properties?: Record<string, { type?: unknown }> }).properties ?? {}
  return Object.entries(properties).flatMap(([name, field]): Array<[string, RegExp]> =>
    field.type === 'integer' ? [[name, INTEGER_TEXT]] : field.type === 'number' ? [[name, NUMBER_TEXT]] : [])
}

/**
 * Ajv coerces text as JavaScript's Number() does, so `0x10`, `1e1`, `0b11`, `+5` and a blank
 * pass as numbers: a client's typo would be read as another value. Numbers must be decimal.
 */
function notDecimal (data: unknown, fields: ReadonlyArray<[string, RegExp]>): ErrorObject | null {
  if (fields.length === 0 || typeof data !== 'object' || data === null) return null
  for (const [name, form] of fields) {
    const value = (data as Record<string, unknown>)[name]
    if (typeof value === 'string' && !form.test(value)) {
      return { instancePath: `/${name}`, schemaPath: '', keyword: 'type', params: {}, message: `must be ${form === INTEGER_TEXT ? 'an integer' : 'a number'} in decimal digits` }
    }
  }
  return null
}
