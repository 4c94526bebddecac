// The app is served by Vite (dev or preview) and chatcast sits behind its proxy, so the
// browser sees one origin: the session cookie and chatcast's Origin check just work.
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

const target = process.env.CHATCAST_URL ?? 'http://127.0.0.1:8000';
const proxy = { '/api': { target, ws: true } };

export default defineConfig({
  plugins: [react()],
  server: { proxy },
  preview: { proxy },
});
