/** SQLSTATE codes the proxy raises itself (PostgreSQL appendix A names). */
export const SqlState = {
  ProtocolViolation: '08P01',
  ConnectionFailure: '08006',
  CannotConnectNow: '57P03',
  AdminShutdown: '57P01',
  QueryCanceled: '57014',
  ActiveSqlTransaction: '25001',
  InvalidAuthorization: '28000',
  InsufficientPrivilege: '42501',
  SyntaxError: '42601',
  UndefinedFunction: '42883',
  InvalidParameterValue: '22023',
  FeatureNotSupported: '0A000',
  ObjectNotInPrerequisiteState: '55000',
  InsufficientResources: '53000',
  ConfigurationLimitExceeded: '53400',
  TooManyConnections: '53300',
  InternalError: 'XX000',
  UndefinedObject: '42704',
  InvalidCatalogName: '3D000',
} as const;
export type SqlStateCode = (typeof SqlState)[keyof typeof SqlState];
