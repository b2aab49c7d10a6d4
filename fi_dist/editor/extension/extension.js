// fi-dist's VSCode extension: the `fi-dist` debug type (its adapter is the job's hub)
// and the Ranks view. Plain JavaScript on the `vscode` API only: nothing to download,
// nothing to compile, so it installs offline from the .vsix fi-dist ships.
'use strict';

const vscode = require('vscode');
const fs = require('fs');
const path = require('path');

const DEBUG_TYPE = 'fi-dist';
const ROOT_THREAD = 1; // the hub's root session shows the whole job as this one thread
const SESSION_FILE = path.join('.vscode', 'fi-dist-session.json');
const RESUME_CONFIG = 'fi-dist: resume all ranks';

const ICONS = {
  running: ['debug-start', 'debugIcon.startForeground'],
  pausing: ['loading~spin', undefined],
  paused: ['debug-pause', 'debugIcon.pauseForeground'],
  blocked: ['watch', 'list.warningForeground'],
  waiting: ['clock', undefined],
  'post-mortem': ['error', 'list.errorForeground'],
  exited: ['circle-slash', 'disabledForeground'],
};

/** A session the fi-dist hub serves (fi-dist or debugpy type): it carries the job token. */
function isHubSession(session) {
  return Boolean(session && session.configuration &&
    typeof session.configuration.fiDistToken === 'string');
}

function rankOf(session) {
  const rank = isHubSession(session) ? session.configuration.fiDistRank : undefined;
  return Number.isInteger(rank) ? rank : undefined;
}

function isRoot(session) {
  return isHubSession(session) && rankOf(session) === undefined;
}

/** One attached job: its root session, the rows the hub sent, its rank sessions. */
class Job {
  constructor(root) {
    this.root = root;
    this.rows = [];
    this.summary = '';
    this.children = new Map();
  }
}

class RanksView {
  constructor() {
    this.jobs = new Map(); // root session id -> Job
    this.changed = new vscode.EventEmitter();
    this.onDidChangeTreeData = this.changed.event;
    this.tree = undefined;
  }

  /** The job of the active debug session, else the newest one. */
  current() {
    const active = vscode.debug.activeDebugSession;
    if (active) {
      const root = isRoot(active) ? active : active.parentSession;
      if (root && this.jobs.has(root.id)) return this.jobs.get(root.id);
    }
    let last;
    for (const job of this.jobs.values()) last = job;
    return last;
  }

  jobOf(session) {
    if (!session) return undefined;
    if (this.jobs.has(session.id)) return this.jobs.get(session.id);
    return session.parentSession ? this.jobs.get(session.parentSession.id) : undefined;
  }

  refresh() {
    const job = this.current();
    if (this.tree) {
      this.tree.description = job ? job.summary : '';
    }
    vscode.commands.executeCommand('setContext', 'fiDist.attached', this.jobs.size > 0);
    this.changed.fire(undefined);
  }

  update(job, body) {
    if (!body || !Array.isArray(body.ranks)) return;
    job.rows = body.ranks;
    job.summary = body.summary || '';
    this.refresh();
  }

  async fetch(job) {
    try {
      this.update(job, await job.root.customRequest('fiDist/ranks'));
    } catch (err) {
      // The root may be gone already; the next event brings the rows anyway.
    }
  }

  getChildren(element) {
    if (element) return [];
    const job = this.current();
    return job ? job.rows.map((row) => ({ job, row })) : [];
  }

  getTreeItem({ job, row }) {
    const item = new vscode.TreeItem(`rank ${row.rank} (node ${row.node})`,
      vscode.TreeItemCollapsibleState.None);
    item.id = `${job.root.id}/${row.rank}`;
    item.description = row.text || row.state;
    const [icon, color] = ICONS[row.state] || ['circle-outline', undefined];
    item.iconPath = new vscode.ThemeIcon(icon, color ? new vscode.ThemeColor(color) : undefined);
    item.tooltip = `rank ${row.rank} on node ${row.node}, pid ${row.pid}: ${row.text || row.state}`;
    const session = job.children.get(row.rank);
    item.contextValue = `fiDistRank ${row.state}${session ? ' session' : ''}`;
    if (session) {
      item.command = { command: 'fiDist.focusRank', title: 'Focus', arguments: [{ job, row }] };
    }
    return item;
  }
}

async function focusRank(view, item) {
  const target = item || {};
  const job = target.job || view.current();
  const row = target.row;
  if (!job || !row) return;
  const session = job.children.get(row.rank);
  if (!session) {
    vscode.window.showInformationMessage(`fi-dist: rank ${row.rank} has no debug session open.`);
    return;
  }
  job.root.customRequest('fiDist/focus', { rank: row.rank }).then(undefined, () => undefined);
  try {
    // Show where the rank is: its first thread's top frame.
    const threads = (await session.customRequest('threads')).threads || [];
    if (!threads.length) return;
    const trace = await session.customRequest('stackTrace',
      { threadId: threads[0].id, startFrame: 0, levels: 1 });
    const frame = (trace.stackFrames || [])[0];
    if (frame && frame.source && frame.source.path && fs.existsSync(frame.source.path)) {
      const line = Math.max(0, (frame.line || 1) - 1);
      await vscode.window.showTextDocument(vscode.Uri.file(frame.source.path),
        { selection: new vscode.Range(line, 0, line, 0), preserveFocus: false });
    }
  } catch (err) {
    vscode.window.showWarningMessage(`fi-dist: rank ${row.rank}: ${err.message || err}`);
  }
}

function sessionFiles() {
  return (vscode.workspace.workspaceFolders || [])
    .map((folder) => ({ folder, file: path.join(folder.uri.fsPath, SESSION_FILE) }))
    .filter(({ file }) => fs.existsSync(file));
}

function updateCanResume() {
  vscode.commands.executeCommand('setContext', 'fiDist.canResume', sessionFiles().length > 0);
}

async function resumeEdited() {
  const found = sessionFiles();
  if (!found.length) {
    vscode.window.showInformationMessage('fi-dist: resuming with edited code needs an ' +
      '@interactive_pytorch job (its session file .vscode/fi-dist-session.json is not in ' +
      'this workspace); a `fi-dist run --debug` job cannot take new code.');
    return;
  }
  await vscode.debug.startDebugging(found[0].folder, RESUME_CONFIG);
}

function activate(context) {
  const view = new RanksView();
  const tree = vscode.window.createTreeView('fiDist.ranks', { treeDataProvider: view });
  view.tree = tree;
  const sub = (d) => context.subscriptions.push(d);
  sub(tree);

  sub(vscode.debug.registerDebugAdapterDescriptorFactory(DEBUG_TYPE, {
    createDebugAdapterDescriptor(session) {
      const connect = session.configuration.connect || {};
      return new vscode.DebugAdapterServer(Number(connect.port || 5678),
        connect.host || '127.0.0.1');
    },
  }));
  sub(vscode.debug.registerDebugConfigurationProvider(DEBUG_TYPE, {
    resolveDebugConfiguration(folder, config) {
      if (!config.type && !config.request) return undefined; // F5 without a launch.json
      if (typeof config.fiDistToken !== 'string' || config.fiDistToken.startsWith('<')) {
        vscode.window.showErrorMessage('fi-dist: this configuration has no job token. ' +
          '`fi-dist run --debug` writes "fi-dist: attach all ranks" into .vscode/launch.json; ' +
          '`fi-dist attach --print` prints it.');
        return undefined;
      }
      return config;
    },
  }));

  sub(vscode.debug.onDidStartDebugSession((session) => {
    if (isRoot(session)) {
      const job = new Job(session);
      view.jobs.set(session.id, job);
      view.fetch(job);
    } else if (rankOf(session) !== undefined) {
      const job = view.jobOf(session);
      if (job) job.children.set(rankOf(session), session);
    }
    view.refresh();
  }));
  sub(vscode.debug.onDidTerminateDebugSession((session) => {
    if (view.jobs.has(session.id)) {
      view.jobs.delete(session.id);
    } else if (rankOf(session) !== undefined) {
      const job = view.jobOf(session);
      if (job && job.children.get(rankOf(session)) === session) {
        job.children.delete(rankOf(session));
      }
    }
    view.refresh();
  }));
  sub(vscode.debug.onDidReceiveDebugSessionCustomEvent((event) => {
    if (event.event === 'fiDist/ranks' && view.jobs.has(event.session.id)) {
      view.update(view.jobs.get(event.session.id), event.body);
    }
  }));
  sub(vscode.debug.onDidChangeActiveDebugSession((session) => {
    const job = view.jobOf(session);
    const rank = rankOf(session);
    if (job && rank !== undefined) {
      // Notices (ranks blocked in a collective) go to the session the user looks at.
      job.root.customRequest('fiDist/focus', { rank }).then(undefined, () => undefined);
    }
    view.refresh();
  }));

  const onJob = (fn) => async () => {
    const job = view.current();
    if (!job) {
      vscode.window.showInformationMessage('fi-dist: no job attached.');
      return;
    }
    try {
      await fn(job);
    } catch (err) {
      vscode.window.showWarningMessage(`fi-dist: ${err.message || err}`);
    }
  };
  sub(vscode.commands.registerCommand('fiDist.breakAll', onJob(
    (job) => job.root.customRequest('pause', { threadId: ROOT_THREAD }))));
  sub(vscode.commands.registerCommand('fiDist.continueAll', onJob(
    (job) => job.root.customRequest('continue', { threadId: ROOT_THREAD }))));
  sub(vscode.commands.registerCommand('fiDist.refreshRanks', onJob((job) => view.fetch(job))));
  sub(vscode.commands.registerCommand('fiDist.focusRank', (item) => focusRank(view, item)));
  sub(vscode.commands.registerCommand('fiDist.resumeEdited', resumeEdited));

  const watcher = vscode.workspace.createFileSystemWatcher(`**/${SESSION_FILE}`);
  sub(watcher);
  sub(watcher.onDidCreate(updateCanResume));
  sub(watcher.onDidDelete(updateCanResume));
  updateCanResume();
  vscode.commands.executeCommand('setContext', 'fiDist.attached', false);
  return { ranks: view };
}

function deactivate() {}

module.exports = { activate, deactivate };
