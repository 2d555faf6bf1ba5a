// Checks Grafana dashboards against Grafana's own published schema.
//
// Usage: node tests/dashboard_schema.mjs NODE_MODULES DASHBOARD.json...
//
// The @grafana/schema package ships that schema as TypeScript types (generated from
// Grafana's CUE kinds), no JSON schema: each dashboard becomes a TypeScript object
// literal declared with the package's `Dashboard` type, and each panel's options and
// custom field config with its plugin's `Options` and `FieldConfig` types. The
// compiler then reports every unknown key (excess property check), wrong type and
// value outside an enumeration. JSON has no TypeScript enums: a string enum is
// compared by its values (`${E}`), as Grafana itself reads the JSON. Panel plugin
// options are checked as partial: Grafana fills the ones a dashboard leaves out.
//
// Prints "PATH: OK" or "PATH: <error>" lines; exit status 1 if any dashboard fails,
// 2 on a usage or installation problem.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [nodeModules, ...dashboards] = process.argv.slice(2);
if (!nodeModules || dashboards.length === 0) {
  console.error("usage: node dashboard_schema.mjs NODE_MODULES DASHBOARD.json...");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(nodeModules), "package.json"));
let ts;
try {
  ts = require("typescript");
  require.resolve("@grafana/schema/package.json");
} catch (e) {
  console.error(`dashboard schema: ${nodeModules} lacks typescript or @grafana/schema: ${e.message}`);
  process.exit(2);
}

// Panel type -> the @grafana/schema module of its options and custom field config.
// A plugin whose module has no FieldConfig takes no custom field config at all.
const PANELCFG = {
  timeseries: ["timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", true],
  stat: ["stat/panelcfg/x/StatPanelCfg_types.gen", false],
  table: ["table/panelcfg/x/TablePanelCfg_types.gen", true],
  bargauge: ["bargauge/panelcfg/x/BarGaugePanelCfg_types.gen", false],
  gauge: ["gauge/panelcfg/x/GaugePanelCfg_types.gen", false],
  "state-timeline": ["statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen", true],
  "status-history": ["statushistory/panelcfg/x/StatusHistoryPanelCfg_types.gen", true],
  piechart: ["piechart/panelcfg/x/PieChartPanelCfg_types.gen", true],
  barchart: ["barchart/panelcfg/x/BarChartPanelCfg_types.gen", true],
  text: ["text/panelcfg/x/TextPanelCfg_types.gen", false],
};
const RAW = "@grafana/schema/dist/esm/raw/composable/";

const PRELUDE = `
import type { Dashboard } from "@grafana/schema";
// The JSON form of a type: string enums by their values.
type Json<T> = T extends string ? \`\${T}\`
  : T extends number | boolean | null | undefined ? T
  : T extends readonly (infer U)[] ? Json<U>[]
  : T extends object ? { [K in keyof T]: Json<T[K]> }
  : T;
// The same with every key optional, at every depth.
type Loose<T> = T extends string ? \`\${T}\`
  : T extends number | boolean | null | undefined ? T
  : T extends readonly (infer U)[] ? Loose<U>[]
  : T extends object ? { [K in keyof T]?: Loose<T[K]> }
  : T;
`;

function panelsOf(doc) {
  const out = [];
  for (const panel of doc.panels ?? []) {
    out.push(panel);
    out.push(...(panel.panels ?? []));
  }
  return out;
}

function source(doc) {
  const imports = [];
  const checks = [];
  const used = new Map();
  for (const panel of panelsOf(doc)) {
    if (panel.type === "row") continue;
    const where = `panel ${JSON.stringify(panel.id)} ${JSON.stringify(panel.title)} (${panel.type})`;
    if (PANELCFG[panel.type] === undefined) {
      checks.push(`// ${where}\nconst unknownPanelType_${checks.length}: "a panel type this check knows" = ${JSON.stringify(panel.type)};`);
      continue;
    }
    const [module, hasFieldConfig] = PANELCFG[panel.type];
    if (!used.has(panel.type)) {
      const alias = `p${used.size}`;
      used.set(panel.type, alias);
      imports.push(`import type * as ${alias} from "${RAW}${module}";`);
    }
    const alias = used.get(panel.type);
    const n = checks.length;
    checks.push(`// ${where}: options\nconst options_${n}: Loose<${alias}.Options> = ${JSON.stringify(panel.options ?? {}, null, 2)};`);
    const custom = panel.fieldConfig?.defaults?.custom ?? {};
    checks.push(`// ${where}: fieldConfig.defaults.custom\nconst custom_${n}: ${hasFieldConfig ? `Loose<${alias}.FieldConfig>` : "{ [key: string]: never }"} = ${JSON.stringify(custom, null, 2)};`);
  }
  return [
    PRELUDE,
    ...imports,
    `// the whole dashboard\nconst dashboard: Json<Dashboard> = ${JSON.stringify(doc, null, 2)};`,
    ...checks,
    "export {};",
  ].join("\n");
}

// Beside NODE_MODULES, so that the compiler resolves the packages as Node would.
const work = fs.mkdtempSync(path.join(path.dirname(path.resolve(nodeModules)), "check-"));
const files = new Map();
for (const [i, dashboard] of dashboards.entries()) {
  let doc;
  try {
    doc = JSON.parse(fs.readFileSync(dashboard, "utf8"));
  } catch (e) {
    console.log(`${dashboard}: not a JSON document: ${e.message}`);
    process.exitCode = 1;
    continue;
  }
  const file = path.join(work, `dashboard_${i}.ts`);
  fs.writeFileSync(file, source(doc));
  files.set(file, dashboard);
}

const program = ts.createProgram([...files.keys()], {
  strict: true,
  noEmit: true,
  skipLibCheck: true,
  noUnusedLocals: false,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  types: [],
});
const failed = new Set();
for (const d of ts.getPreEmitDiagnostics(program)) {
  const file = d.file?.fileName;
  const text = ts.flattenDiagnosticMessageText(d.messageText, "\n  ");
  if (!file || !files.has(file)) {
    // A problem in the package or compiler setup, not in a dashboard.
    console.log(`dashboard schema: ${file ?? "compiler"}: ${text}`);
    process.exitCode = 2;
    continue;
  }
  const { line } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
  const lines = d.file.text.split("\n");
  // The comment naming the panel (or the whole dashboard) above the failing check.
  let context = "";
  for (let l = line; l >= 0; l--) {
    if (lines[l].startsWith("// ")) { context = lines[l].slice(3); break; }
  }
  failed.add(file);
  console.log(`${files.get(file)}: ${context}: at \`${lines[line].trim()}\`: ${text}`);
}
for (const [file, dashboard] of files) {
  if (!failed.has(file)) console.log(`${dashboard}: OK`);
  else process.exitCode = Math.max(process.exitCode ?? 0, 1);
}
fs.rmSync(work, { recursive: true, force: true });
