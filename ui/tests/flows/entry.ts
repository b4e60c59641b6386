import { installMockBackend } from './mock-backend';
installMockBackend();
await import('../../src/main');
