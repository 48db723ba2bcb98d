// Validates a librechat.yaml the way LibreChat does at start:
// configSchema.strict().safeParse(config), with the schema from librechat-data-provider.
//
//   node validate_librechat_yaml.mjs FILE      (exit 0 and "valid", or 1 and the issues)
import fs from 'node:fs';
import yaml from 'js-yaml';
import { configSchema } from 'librechat-data-provider';

const file = process.argv[2];
const config = yaml.load(fs.readFileSync(file, 'utf8'));
const result = configSchema.strict().safeParse(config);
if (!result.success) {
  for (const issue of result.error.issues) {
    console.error(`${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  process.exit(1);
}
console.log('valid');
