import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport, generateId } from 'ai';
import { useEffect, useMemo, useState } from 'react';

// chatcast's AI SDK routes (see docs/aisdk.md); the Vite proxy forwards /api to chatcast.
const API = '/api/ai/chat';

/** The chat's id lives in the URL, so a reload (or a second tab) opens the same chat. */
function chatIdFromUrl() {
  const found = new URLSearchParams(window.location.hash.slice(1)).get('chat');
  if (found) return found;
  const id = generateId();
  window.history.replaceState(null, '', `#chat=${id}`);
  return id;
}

export default function App() {
  const id = useMemo(chatIdFromUrl, []);
  const [history, setHistory] = useState(null);

  // chatcast keeps the history: load it (with the answer in progress, if any) once.
  useEffect(() => {
    fetch(`${API}/${encodeURIComponent(id)}/messages`)
      .then((r) => (r.ok ? r.json() : { messages: [] }))
      .then((body) => setHistory(body.messages));
  }, [id]);

  if (history === null) return <p className="loading">Loading…</p>;
  return <Chat id={id} initialMessages={history} />;
}

function Chat({ id, initialMessages }) {
  const transport = useMemo(() => new DefaultChatTransport({ api: API }), []);
  const { messages, sendMessage, regenerate, status, error, clearError } = useChat({
    id,
    messages: initialMessages,
    transport,
    resume: true, // an answer still generating after a reload streams on, from its start
  });
  const [input, setInput] = useState('');
  const busy = status === 'submitted' || status === 'streaming';

  // Stop for real: the server ends the generation for everyone and keeps the partial
  // answer; this page's stream then ends by itself, showing exactly what was kept.
  async function stop() {
    await fetch(`${API}/${encodeURIComponent(id)}/stop`, { method: 'POST' });
  }

  function submit(event) {
    event.preventDefault();
    if (!input.trim() || busy) return;
    sendMessage({ text: input });
    setInput('');
  }

  return (
    <main>
      <h1>chatcast + useChat</h1>
      <ol className="messages" data-testid="messages">
        {messages.map((m) => (
          <li key={m.id} className={m.role} data-testid={`message-${m.role}`}
              data-status={m.metadata?.status ?? ''}>
            {m.parts.map((part, i) => {
              if (part.type === 'reasoning') {
                return (
                  <details key={i} className="reasoning" open={part.state === 'streaming'}>
                    <summary>Thinking</summary>
                    <p>{part.text}</p>
                  </details>
                );
              }
              if (part.type === 'text') return <p key={i} className="text">{part.text}</p>;
              return null;
            })}
            {m.metadata?.status === 'stopped' && <small className="note">stopped</small>}
          </li>
        ))}
      </ol>
      {error && (
        <div className="error" role="alert" data-testid="error">
          {describe(error)} <button type="button" onClick={clearError}>Dismiss</button>
        </div>
      )}
      <form onSubmit={submit}>
        <input value={input} onChange={(e) => setInput(e.target.value)}
               placeholder="Ask something…" aria-label="Message" />
        {busy
          ? <button type="button" onClick={stop}>Stop</button>
          : <button type="submit">Send</button>}
        <button type="button" onClick={() => regenerate()}
                disabled={busy || messages.length === 0}>Regenerate</button>
      </form>
      <p className="status" data-testid="status">{status}</p>
    </main>
  );
}

/** chatcast refuses requests with `{"error": {"code", "message"}}`; streams end in text. */
function describe(error) {
  try {
    return JSON.parse(error.message).error.message;
  } catch {
    return error.message;
  }
}
